//! Asking the receiver's user before a transfer is accepted: the sessions of one
//! transfer (N with a parallel code) hand their offers to one gate, which asks once
//! with all of them and gives every session the same answer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use p2p_copy_core::consent::Offer;

use crate::rt::Rt;

/// What the receiver's user is shown before accepting a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOffer {
    /// The files offered, over every session of the transfer.
    pub offer: Offer,
    /// Of those, the paths that already exist in the output directory (under their
    /// final names), in manifest order.
    pub existing: Vec<String>,
}

/// The question to the receiver's user: true accepts. It runs on a blocking thread,
/// once per transfer, before anything is written (see
/// [`ClientConfig::consent`](crate::ClientConfig::consent)).
#[derive(Clone)]
pub struct ConsentAsk(pub Arc<dyn Fn(&TransferOffer) -> bool + Send + Sync>);

impl std::fmt::Debug for ConsentAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsentAsk")
    }
}

/// One question for the sessions of a transfer.
pub(crate) struct ConsentGate {
    ask: ConsentAsk,
    out_dir: PathBuf,
    sessions: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    offers: Vec<Offer>,
    answers: Vec<async_channel::Sender<bool>>,
}

impl ConsentGate {
    /// A gate for `sessions` sessions receiving into `out_dir`.
    pub(crate) fn new(ask: ConsentAsk, out_dir: PathBuf, sessions: usize) -> Arc<ConsentGate> {
        Arc::new(ConsentGate {
            ask,
            out_dir,
            sessions: sessions.max(1),
            waiting: Mutex::new(Waiting::default()),
        })
    }

    /// One session's offer; resolves to the user's answer once every session has
    /// offered (false if the question could not be asked).
    pub(crate) fn ask<R: Rt>(&self, rt: &R, offer: Offer) -> BoxFuture<'static, bool> {
        let (tx, rx) = async_channel::bounded(1);
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.offers.push(offer);
        w.answers.push(tx);
        if w.offers.len() < self.sessions {
            return Box::pin(async move { rx.recv().await.unwrap_or(false) });
        }
        let offer = Offer::merge(std::mem::take(&mut w.offers));
        let answers = std::mem::take(&mut w.answers);
        let (ask, dir) = (self.ask.clone(), self.out_dir.clone());
        let asked = rt.spawn_blocking(move || {
            let existing = existing(&dir, &offer);
            (ask.0)(&TransferOffer { offer, existing })
        });
        Box::pin(async move {
            let answer = asked.await;
            for a in answers {
                let _ = a.try_send(answer);
            }
            rx.recv().await.unwrap_or(false)
        })
    }
}

/// The offered paths that exist below `dir` under their final names.
fn existing(dir: &Path, offer: &Offer) -> Vec<String> {
    offer
        .entries()
        .iter()
        .filter(|(p, _)| std::fs::symlink_metadata(dir.join(p.as_str())).is_ok())
        .map(|(p, _)| p.as_str().to_owned())
        .collect()
}
