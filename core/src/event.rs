//! Progress events the state machines report.

use crate::wire::Compression;
use crate::Error;

/// Something worth telling the user. Drain with `poll_event` after every input.
///
/// File names are the peer's or the user's paths as sent on the wire: escape them
/// with [`crate::path::escape`] before printing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Sender: the relay paired us with a receiver.
    Paired,
    /// Sender: the adaptive compression level moved ([`CompressLevel::Adaptive`](crate::sender::CompressLevel::Adaptive)):
    /// pieces compressed from now on get this zstd level.
    CompressLevel {
        /// The new level.
        level: i32,
    },
    /// The manifest was sent (sender) or received (receiver).
    Manifest {
        /// Number of files.
        files: usize,
        /// Their total size in bytes.
        bytes: u64,
    },
    /// Sender: the receiver asks its user whether to accept the transfer (extension
    /// [`EXT_CONSENT`](crate::wire::EXT_CONSENT)); no file data moves until it answers.
    AwaitingConsent,
    /// A file's data starts.
    FileStarted {
        /// Its path.
        path: String,
        /// Its whole size.
        size: u64,
        /// Bytes the receiver already had and are not sent again.
        append_from: u64,
        /// How its pieces are compressed.
        compression: Compression,
    },
    /// More of the current file's data was sent (sender) or verified (receiver).
    Progress {
        /// Bytes of file data added by this step.
        delta: u64,
        /// Bytes of this file done so far, counting `append_from`.
        file_bytes: u64,
    },
    /// The receiver already had the whole file; nothing is sent.
    FileSkipped {
        /// Its path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A file is complete (sender: all data sent; receiver: all data verified and
    /// written; it is put in place under its final name when the session commits, just
    /// before [`Event::Done`]).
    FileDone {
        /// Its path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Receiver: a text arrived whole and verified (extension
    /// [`EXT_TEXT`](crate::wire::EXT_TEXT)); show it (no file is written). Comes just
    /// before the entry's [`Event::FileDone`].
    Text {
        /// The name the sender gave it.
        path: String,
        /// The text, valid UTF-8, at most [`TEXT_MAX`](crate::wire::TEXT_MAX) bytes.
        text: String,
    },
    /// A file was not delivered: the sender skipped it (`skip_errors`: it could not be
    /// read or changed while being sent), or the receiver could not put it in place.
    FileNotDelivered {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Receiver, at the commit: a different file was already under this name and is
    /// kept (`--no-clobber`); the received copy was dropped.
    FileKept {
        /// Its path.
        path: String,
    },
    /// Receiver, at the end (extension [`EXT_METADATA`](crate::wire::EXT_METADATA)):
    /// permission bits, times or directories of the sender's that were not kept (the
    /// file system cannot keep them, a symlink or a file stood in the way, the sender
    /// gave setuid bits or an absurd time). The files themselves are in place.
    MetadataNotKept(crate::metadata::Notes),
    /// Sender, at the end: whether the receiver confirmed what it put in place
    /// (extension [`EXT_CONFIRM`](crate::wire::EXT_CONFIRM)). A p2p-copy 0.1.x receiver
    /// cannot confirm: `confirmed` is false and the files were sent, not known to be
    /// stored.
    Delivery {
        /// True when the receiver's report confirmed every file it reported on.
        confirmed: bool,
        /// Files the receiver reported in place (0 when not confirmed).
        delivered: u64,
    },
    /// The session finished successfully.
    Done,
    /// The session failed; the error is sticky.
    Failed(Error),
    /// The connection was lost; the runtime reconnects (extension
    /// [`EXT_RECONNECT`](crate::wire::EXT_RECONNECT)) after `after`, for attempt
    /// `attempt` of `of`. Reported by the runtime, not by the state machines.
    Reconnecting {
        /// 1-based.
        attempt: u32,
        /// The most attempts (`--max-retries`).
        of: u32,
        /// The wait before dialling.
        after: std::time::Duration,
        /// What went wrong, for the user.
        reason: String,
    },
    /// Where the session's messages travel (extension
    /// [`EXT_DIRECT`](crate::wire::EXT_DIRECT)): reported by the runtime that runs the
    /// direct-path attempt beside the session, not by the state machines.
    Path(PathEvent),
}

/// A change of the path a session's messages take (see [`Event::Path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// The session stays on the relay: why (the peer does not support direct
    /// connections, no direct path came up in time, the user asked for the relay).
    Relay {
        /// Why, for the user.
        reason: String,
    },
    /// The session moved to a direct connection with the peer.
    Direct {
        /// The peer's address on it.
        addr: std::net::SocketAddr,
        /// True when the address is one the peer learned from a STUN server (the path
        /// crosses NATs: hole-punched), false for an address of the peer's own
        /// interfaces (one LAN, or no NAT between).
        punched: bool,
        /// From the start of the attempt to the switch.
        setup: std::time::Duration,
    },
    /// The direct connection failed after the switch; the rest of the session goes
    /// through the relay, starting where the direct path stopped.
    BackToRelay {
        /// Why, for the user.
        reason: String,
    },
}
