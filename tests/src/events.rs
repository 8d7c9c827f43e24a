//! Recording the progress events a session reports, to assert on them afterwards.

use std::sync::{Arc, Mutex};

use p2p_copy_core::Event;

use crate::SessionEvent;

/// A shared list of the events one side reported.
#[derive(Debug, Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<SessionEvent>>>);

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// A callback for `send`/`receive` that appends to this log.
    pub fn recorder(&self) -> impl FnMut(SessionEvent) + Send + 'static {
        let log = self.0.clone();
        move |ev| log.lock().expect("event log poisoned").push(ev)
    }

    /// Every event so far, in order.
    pub fn all(&self) -> Vec<SessionEvent> {
        self.0.lock().expect("event log poisoned").clone()
    }

    /// The core events so far, without their session index.
    pub fn events(&self) -> Vec<Event> {
        self.all().into_iter().map(|e| e.event).collect()
    }

    /// `append_from` of each `FileStarted`, by path.
    pub fn started(&self) -> Vec<(String, u64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::FileStarted {
                    path, append_from, ..
                } => Some((path, append_from)),
                _ => None,
            })
            .collect()
    }

    /// Paths of each `FileSkipped`.
    pub fn skipped(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::FileSkipped { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// Bytes of file data reported by `Progress` events, summed.
    pub fn progress_bytes(&self) -> u64 {
        self.events()
            .into_iter()
            .map(|e| match e {
                Event::Progress { delta, .. } => delta,
                _ => 0,
            })
            .sum()
    }
}
