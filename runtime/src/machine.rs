//! One interface over the sender and receiver state machines, so the loop that drives
//! them is written once.

use std::time::Instant;

use p2p_copy_core::{receiver, sender, Error, Event, WireMessage};

/// Carries out a state machine's file requests, one at a time, in order.
pub(crate) trait FileIo: Send + 'static {
    /// What the machine asks for.
    type Request: Send + 'static + crate::io_worker::Cheap;
    /// The answer.
    type Completion: Send + 'static;
    /// Do one request; `None` for requests that need no answer.
    fn run(&mut self, req: Self::Request) -> Option<Self::Completion>;
    /// Whether an answer reports a failure (later requests are then not carried out).
    fn is_failure(done: &Self::Completion) -> bool;
    /// Whether cheap requests may run on the session loop: false when even a small
    /// write may block for long (standard output into a slow pipe).
    fn inline_ok(&self) -> bool {
        true
    }
}

/// The sans-IO vocabulary shared by [`sender::Sender`] and [`receiver::Receiver`].
pub(crate) trait Machine: Send + 'static {
    type Files: FileIo;
    type Job: Send + 'static;
    type JobResult: Send + 'static;

    fn handle_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error>;
    fn handle_io(
        &mut self,
        now: Instant,
        done: <Self::Files as FileIo>::Completion,
    ) -> Result<(), Error>;
    fn handle_job(&mut self, now: Instant, done: Self::JobResult) -> Result<(), Error>;
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Error>;
    fn handle_close(&mut self, now: Instant, code: Option<u16>, reason: &str) -> Result<(), Error>;

    fn poll_transmit(&mut self) -> Option<WireMessage>;
    fn poll_io(&mut self) -> Option<<Self::Files as FileIo>::Request>;
    fn poll_job(&mut self) -> Option<Self::Job>;
    fn poll_event(&mut self) -> Option<Event>;
    fn poll_timeout(&self) -> Option<Instant>;

    /// Whether to read the next message from the connection now.
    fn wants_input(&self) -> bool;
    fn is_finished(&self) -> bool;
    fn error(&self) -> Option<&Error>;

    fn job_is_light(job: &Self::Job) -> bool;
    fn run_job(job: Self::Job) -> Self::JobResult;

    /// After failing: whether a message from the peer could still release a report for
    /// it (see `Sender::awaits_acceptance`).
    fn awaits_acceptance(&self) -> bool {
        false
    }

    /// Fail the session for a reason of the runtime's own.
    fn abort(&mut self, e: Error);

    /// Once: the peer's answer to the offer of a direct connection (see
    /// `Sender::take_direct_start`).
    fn take_direct_start(&mut self) -> Option<p2p_copy_core::direct::DirectAnswer> {
        None
    }

    /// Whether the peer's user is deciding whether to accept (see
    /// `Sender::awaits_consent`): a connection that takes no data is then not stalled.
    fn awaits_consent(&self) -> bool {
        false
    }

    /// Once: what the receiver's user must accept (see `Receiver::take_offer`).
    fn take_offer(&mut self) -> Option<p2p_copy_core::consent::Offer> {
        None
    }

    /// The user's answer to the offer (see `Receiver::consent`).
    fn consent(&mut self, _now: Instant, _accept: bool) {}
}

impl crate::io_worker::Cheap for sender::IoRequest {
    fn is_cheap(&self) -> bool {
        match self {
            sender::IoRequest::Read { len, .. } => *len <= crate::io_worker::CHEAP_BYTES,
            sender::IoRequest::Close { .. } => true,
        }
    }
}

impl crate::io_worker::Cheap for receiver::IoRequest {
    fn is_cheap(&self) -> bool {
        use crate::io_worker::CHEAP_BYTES;
        match self {
            receiver::IoRequest::Stat { .. } | receiver::IoRequest::Commit { .. } => true,
            // Appending may first copy a whole complete file to its partial name.
            receiver::IoRequest::Open { append_from, .. } => *append_from == 0,
            receiver::IoRequest::Write { data, .. } => data.len() <= CHEAP_BYTES,
            receiver::IoRequest::ReadBack { len, .. } => *len <= CHEAP_BYTES,
            // Closing syncs only a file on another filesystem than the output directory
            // (a mount below it), which is rare; Sync flushes the whole filesystem.
            receiver::IoRequest::Close { .. } => true,
            receiver::IoRequest::Sync | receiver::IoRequest::ApplyMetadata { .. } => false,
        }
    }
}

macro_rules! delegate {
    () => {
        fn handle_message(&mut self, now: Instant, msg: WireMessage) -> Result<(), Error> {
            self.handle_message(now, msg)
        }
        fn handle_io(
            &mut self,
            now: Instant,
            done: <Self::Files as FileIo>::Completion,
        ) -> Result<(), Error> {
            self.handle_io(now, done)
        }
        fn handle_job(&mut self, now: Instant, done: Self::JobResult) -> Result<(), Error> {
            self.handle_job(now, done)
        }
        fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
            self.handle_timeout(now)
        }
        fn handle_close(
            &mut self,
            now: Instant,
            code: Option<u16>,
            reason: &str,
        ) -> Result<(), Error> {
            self.handle_close(now, code, reason)
        }
        fn poll_transmit(&mut self) -> Option<WireMessage> {
            self.poll_transmit()
        }
        fn poll_io(&mut self) -> Option<<Self::Files as FileIo>::Request> {
            self.poll_io()
        }
        fn poll_job(&mut self) -> Option<Self::Job> {
            self.poll_job()
        }
        fn poll_event(&mut self) -> Option<Event> {
            self.poll_event()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.poll_timeout()
        }
        fn is_finished(&self) -> bool {
            self.is_finished()
        }
        fn error(&self) -> Option<&Error> {
            self.error()
        }
        fn job_is_light(job: &Self::Job) -> bool {
            job.is_light()
        }
        fn run_job(job: Self::Job) -> Self::JobResult {
            job.run()
        }
        fn take_direct_start(&mut self) -> Option<p2p_copy_core::direct::DirectAnswer> {
            self.take_direct_start()
        }
        fn abort(&mut self, e: Error) {
            self.abort(e)
        }
    };
}

impl Machine for sender::Sender {
    type Files = crate::files_send::SendFiles;
    type Job = sender::Job;
    type JobResult = sender::JobResult;

    delegate!();

    fn awaits_acceptance(&self) -> bool {
        self.awaits_acceptance()
    }

    fn awaits_consent(&self) -> bool {
        self.awaits_consent()
    }

    /// The sender takes messages (`ready`, the resume answer) whenever they come; its
    /// backpressure is on the sending side.
    fn wants_input(&self) -> bool {
        true
    }
}

impl Machine for receiver::Receiver {
    type Files = crate::files_receive::ReceiveFiles;
    type Job = receiver::Job;
    type JobResult = receiver::JobResult;

    delegate!();

    fn wants_input(&self) -> bool {
        self.wants_input()
    }

    fn take_offer(&mut self) -> Option<p2p_copy_core::consent::Offer> {
        self.take_offer()
    }

    fn consent(&mut self, now: Instant, accept: bool) {
        // A refusal is the session's end, reported through `error`.
        let _ = self.consent(now, accept);
    }
}
