//! Running a sender and a receiver against each other in one process.

use std::path::PathBuf;
use std::time::Duration;

use futures_lite::future;

use crate::deadline::{sleep, within};
use crate::events::EventLog;
use crate::{ClientConfig, Runtime, SendOptions, Summary, TransferError};

/// Which side connects to the relay first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Both start at once.
    Together,
    /// The sender starts [`Pair::head_start`] after the receiver.
    ReceiverFirst,
    /// The receiver starts [`Pair::head_start`] after the sender.
    SenderFirst,
}

/// One transfer: a sender and a receiver with the same code, run concurrently.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The sender's connection settings.
    pub send_cfg: ClientConfig,
    /// The receiver's connection settings.
    pub recv_cfg: ClientConfig,
    /// What the sender sends.
    pub paths: Vec<PathBuf>,
    /// Where the receiver writes.
    pub out: PathBuf,
    /// The sender's options.
    pub opts: SendOptions,
    /// Who starts first.
    pub order: Order,
    /// How long the first side runs alone, for [`Order::ReceiverFirst`] and
    /// [`Order::SenderFirst`]: enough for it to reach the relay and wait there.
    pub head_start: Duration,
    /// The whole transfer must end within this, or the test fails.
    pub limit: Duration,
}

impl Pair {
    /// A plain transfer of `paths` into `out` through `server` with `code`. Pairing gives
    /// up after 20 s and the whole transfer must end within 60 s.
    pub fn new(server: &str, code: &str, paths: Vec<PathBuf>, out: PathBuf) -> Pair {
        let mut cfg = ClientConfig::new(server, code);
        cfg.pair_timeout = Duration::from_secs(20);
        cfg.idle_timeout = Duration::from_secs(20);
        Pair {
            send_cfg: cfg.clone(),
            recv_cfg: cfg,
            paths,
            out,
            opts: SendOptions::default(),
            order: Order::Together,
            head_start: Duration::from_millis(300),
            limit: Duration::from_secs(60),
        }
    }

    /// Set `encrypt` on both sides.
    pub fn encrypt(mut self, on: bool) -> Pair {
        self.send_cfg.encrypt = on;
        self.recv_cfg.encrypt = on;
        self
    }

    /// Set the pairing timeout of both sides.
    pub fn pair_timeout(mut self, t: Duration) -> Pair {
        self.send_cfg.pair_timeout = t;
        self.recv_cfg.pair_timeout = t;
        self
    }

    /// Trust this CA (PEM) on both sides.
    pub fn ca_file(mut self, ca: PathBuf) -> Pair {
        self.send_cfg.ca_file = Some(ca.clone());
        self.recv_cfg.ca_file = Some(ca);
        self
    }

    /// Ask the receiver what it has and send only the rest.
    pub fn resume(mut self, on: bool) -> Pair {
        self.opts.resume = on;
        self
    }

    /// Who starts first.
    pub fn order(mut self, order: Order) -> Pair {
        self.order = order;
        self
    }

    /// Run both sides on runtime `R` until both end; panic if that takes longer than
    /// [`Pair::limit`].
    pub fn run<R: Runtime>(self) -> PairOutcome {
        let send_events = EventLog::new();
        let receive_events = EventLog::new();
        let (send_delay, recv_delay) = match self.order {
            Order::Together => (Duration::ZERO, Duration::ZERO),
            Order::ReceiverFirst => (self.head_start, Duration::ZERO),
            Order::SenderFirst => (Duration::ZERO, self.head_start),
        };
        let sender = {
            let rec = send_events.recorder();
            async move {
                sleep(send_delay).await;
                R::send(self.send_cfg, self.paths, self.opts, rec).await
            }
        };
        let receiver = {
            let rec = receive_events.recorder();
            async move {
                sleep(recv_delay).await;
                R::receive(self.recv_cfg, self.out, rec).await
            }
        };
        let what = format!("transfer on {}", R::NAME);
        let (send, receive) = R::block_on(within(self.limit, &what, future::zip(sender, receiver)));
        PairOutcome {
            send,
            receive,
            send_events,
            receive_events,
        }
    }
}

/// How both sides of a [`Pair`] ended.
#[derive(Debug)]
pub struct PairOutcome {
    /// The sender's result.
    pub send: Result<Summary, TransferError>,
    /// The receiver's result.
    pub receive: Result<Summary, TransferError>,
    /// What the sender reported.
    pub send_events: EventLog,
    /// What the receiver reported.
    pub receive_events: EventLog,
}

impl PairOutcome {
    /// Both summaries (sender, receiver); panics with both errors unless both succeeded.
    pub fn expect_ok(&self) -> (&Summary, &Summary) {
        match (&self.send, &self.receive) {
            (Ok(s), Ok(r)) => (s, r),
            (s, r) => panic!("transfer failed:\n  sender:   {s:?}\n  receiver: {r:?}"),
        }
    }

    /// Both errors (sender, receiver); panics unless both sides failed.
    pub fn expect_both_failed(&self) -> (&TransferError, &TransferError) {
        match (&self.send, &self.receive) {
            (Err(s), Err(r)) => (s, r),
            (s, r) => panic!("expected both sides to fail:\n  sender:   {s:?}\n  receiver: {r:?}"),
        }
    }
}
