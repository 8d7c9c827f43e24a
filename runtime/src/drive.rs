//! The loop that runs one session: it feeds the state machine every input (messages,
//! file completions, job results, timeouts, the connection's end) and carries out what
//! it asks for, draining its outputs after every input.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message;
use futures_util::future::{poll_fn, select, BoxFuture};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, StreamExt};
use p2p_copy_core::relay::{CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TRY_AGAIN};
use p2p_copy_core::{Error, Event};

use crate::io_worker::IoWorker;
use crate::machine::Machine;
use crate::rt::Rt;
use crate::transport::{from_wire, to_wire, Ws};
use crate::{SessionEvent, Summary, TransferError};

/// The user's event callback, shared by the parallel sessions of one transfer.
pub(crate) type EventSink = Arc<Mutex<dyn FnMut(SessionEvent) + Send>>;

/// How long a finished session waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One session's state machine, connection, file worker, jobs and timer.
pub(crate) struct Driver<R: Rt, M: Machine> {
    rt: R,
    machine: M,
    ws: Ws,
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
    session: usize,
    events: EventSink,
    summary: Summary,
}

impl<R: Rt, M: Machine> Driver<R, M> {
    pub(crate) fn new(
        rt: R,
        machine: M,
        ws: Ws,
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
            session,
            events,
            summary: Summary::default(),
        }
    }

    /// Run the session to its end, then close the connection: normally on success,
    /// with an error code on failure. Dropping the future abandons the session: the file
    /// thread finishes the request at hand and stops, and partial files stay for a later
    /// resume.
    pub(crate) async fn run(mut self) -> Result<Summary, TransferError> {
        self.drain_outputs();
        let outcome = poll_fn(|cx| self.poll_session(cx)).await;
        match outcome {
            Ok(()) => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                self.close(frame, true).await;
                Ok(self.summary)
            }
            Err(e) => {
                let frame = CloseFrame {
                    code: CloseCode::Error,
                    reason: e.kind().into(),
                };
                self.close(frame, false).await;
                Err(self.classify(e))
            }
        }
    }

    /// Send a close frame and, after success, wait briefly for the peer's, so the relay
    /// sees an orderly end.
    async fn close(&mut self, frame: CloseFrame, wait_reply: bool) {
        if !self.writing {
            return;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        let ws = &mut self.ws;
        let reading = self.reading;
        let closing = async move {
            if ws.send(Message::Close(Some(frame))).await.is_err() || !wait_reply || !reading {
                return;
            }
            while let Some(Ok(_)) = ws.next().await {}
        };
        let _ = select(Box::pin(closing), Box::pin(self.rt.sleep_until(deadline))).await;
    }

    /// A failure as the caller sees it: a relay refusal before pairing is a relay
    /// problem, not the peer's.
    fn classify(&self, e: Error) -> TransferError {
        if !self.paired && matches!(e, Error::Peer { .. }) {
            match &self.close_frame {
                Some((CLOSE_TRY_AGAIN | CLOSE_PROTOCOL, _)) => return TransferError::Connect(e.to_string()),
                Some((CLOSE_POLICY, reason)) => {
                    return TransferError::Session(Error::Timeout(format!(
                        "the relay stopped waiting ({}): check that both sides use the same code, the same --encrypt setting and the same relay",
                        p2p_copy_core::path::escape(reason)
                    )))
                }
                _ => {}
            }
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
            if !any {
                return;
            }
        }
    }

    fn report(&mut self, event: Event) {
        self.summary.count(&event);
        if matches!(event, Event::Paired | Event::Manifest { .. }) {
            self.paired = true;
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

    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let now = Instant::now();
            let mut progress = false;
            if let Some(e) = self.machine.error() {
                return Poll::Ready(Err(e.clone()));
            }

            // Messages out, only as fast as the connection takes them: that is the
            // sender's backpressure.
            let mut drained = false;
            let mut write_blocked = false;
            while self.writing {
                match Pin::new(&mut self.ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.blocked_since = None;
                        let Some(msg) = self.machine.poll_transmit() else {
                            drained = true;
                            break;
                        };
                        progress = true;
                        if let Err(e) = Pin::new(&mut self.ws).start_send(from_wire(msg)) {
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
                match Pin::new(&mut self.ws).poll_flush(cx) {
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
            if self.reading && self.machine.wants_input() {
                match self.ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        progress = true;
                        match msg {
                            Message::Close(frame) => {
                                self.close_frame = frame
                                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                            }
                            other => {
                                if let Some(wire) = to_wire(other) {
                                    let _ = self.machine.handle_message(now, wire);
                                    self.drain_outputs();
                                }
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        progress = true;
                        log::debug!("session {}: read failed: {e}", self.session);
                        self.closed(now, Some(e.to_string()));
                    }
                    Poll::Ready(None) => {
                        progress = true;
                        self.closed(now, None);
                    }
                    Poll::Pending => {}
                }
            }

            // Deadlines: the machine's, and how long the connection may refuse data.
            let stall = self.blocked_since.map(|t| t + self.idle_timeout);
            let close_wait = self.write_failed.as_ref().map(|(t, _)| *t + CLOSE_WAIT);
            let deadline = [self.machine.poll_timeout(), stall, close_wait]
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
