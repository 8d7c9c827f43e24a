//! Errors, split by whose fault they are.

use std::fmt;

/// Every way a session can fail.
///
/// Variants are grouped by fault so a runtime can map them to exit codes and messages:
/// the peer broke the protocol, data failed an integrity check, local I/O failed, the
/// caller misused the API, a deadline passed, or the session was cancelled.
///
/// A fatal error is sticky: the state machine reports it once as
/// [`Event::Failed`](crate::Event::Failed) and returns it from every later call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer (or the relay) sent something the protocol does not allow.
    #[error("protocol violation{}: {reason}", FileCtx(file))]
    Peer {
        /// The file concerned, already escaped for display.
        file: Option<String>,
        /// What was wrong.
        reason: String,
    },
    /// Data arrived but failed a check: chain, tag, size or decompression.
    #[error("integrity check failed{}: {reason}", FileCtx(file))]
    Integrity {
        /// The file concerned, already escaped for display.
        file: Option<String>,
        /// What was wrong.
        reason: String,
    },
    /// A local file operation failed (as reported by the runtime).
    #[error("local I/O error{}: {reason}", FileCtx(file))]
    Io {
        /// The file concerned, already escaped for display.
        file: Option<String>,
        /// The operating system's message.
        reason: String,
    },
    /// The caller broke the API contract (for example fed a completion nobody asked for).
    #[error("API misuse: {0}")]
    Misuse(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The session was cancelled locally.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Setting up the session failed (bad code, bad parameters).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The connection ended before the session did, without a protocol error: the peer
    /// went away (killed, interrupted, its network dropped) or the relay did.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer reported that the transfer failed on its side (extension
    /// [`EXT_CONFIRM`](crate::wire::EXT_CONFIRM)), or files did not arrive.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// A direct connection was required (`direct-only`) and none came up, or the peer
    /// does not support one (extension [`EXT_DIRECT`](crate::wire::EXT_DIRECT)).
    #[error("no direct path: {0}")]
    NoDirectPath(String),
    /// The two sides hold different codes: the PAKE of a code like `7-guitar-rocket`
    /// did not confirm ([`crate::pake`]).
    #[error("{0}")]
    WrongCode(String),
    /// The relay refused to let this side into the room of a code like
    /// `7-guitar-rocket`: a client in the same role waits there (another transfer drew
    /// the same number).
    #[error("{0}")]
    RoomInUse(String),
    /// The receiver's user declined the transfer (extension
    /// [`EXT_CONSENT`](crate::wire::EXT_CONSENT)): nothing was written.
    #[error("declined: {0}")]
    Declined(String),
    /// The peer cannot do what this side was asked to do (a stream, a text, output to
    /// standard output of more than one file, a file list over the 2 MiB a v1 message
    /// holds for a p2p-copy 0.1.x receiver): nothing was sent or written.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

struct FileCtx<'a>(&'a Option<String>);

impl fmt::Display for FileCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, " in {name}"),
            None => Ok(()),
        }
    }
}

impl Error {
    /// The sticky error of a failed state machine, returned again by every later call.
    pub(crate) fn sticky(error: &Option<Error>) -> Result<(), Error> {
        match error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// A protocol violation by the peer that concerns no one file.
    pub fn peer(reason: impl Into<String>) -> Self {
        Error::Peer {
            file: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn peer_in(file: &str, reason: impl Into<String>) -> Self {
        Error::Peer {
            file: Some(crate::path::escape(file)),
            reason: reason.into(),
        }
    }

    pub(crate) fn integrity_in(file: &str, reason: impl Into<String>) -> Self {
        Error::Integrity {
            file: Some(crate::path::escape(file)),
            reason: reason.into(),
        }
    }

    pub(crate) fn integrity(reason: impl Into<String>) -> Self {
        Error::Integrity {
            file: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn io_in(file: &str, reason: impl Into<String>) -> Self {
        Error::Io {
            file: Some(crate::path::escape(file)),
            reason: reason.into(),
        }
    }

    pub(crate) fn misuse(reason: impl Into<String>) -> Self {
        Error::Misuse(reason.into())
    }

    /// A short, stable name of the fault class (`peer`, `integrity`, `io`, `misuse`,
    /// `timeout`, `cancelled`, `config`, `lost`, `undelivered`, `direct`, `wrong_code`,
    /// `room`, `declined`, `unsupported`), for logs and exit-code mapping.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Peer { .. } => "peer",
            Error::Integrity { .. } => "integrity",
            Error::Io { .. } => "io",
            Error::Misuse(_) => "misuse",
            Error::Timeout(_) => "timeout",
            Error::Cancelled(_) => "cancelled",
            Error::Config(_) => "config",
            Error::ConnectionLost(_) => "lost",
            Error::NotDelivered(_) => "undelivered",
            Error::NoDirectPath(_) => "direct",
            Error::WrongCode(_) => "wrong_code",
            Error::RoomInUse(_) => "room",
            Error::Declined(_) => "declined",
            Error::Unsupported(_) => "unsupported",
        }
    }
}

/// The error for a connection that closed before the session ended, saying what the
/// relay's close code means and who went away.
pub(crate) fn closed_error(code: Option<u16>, reason: &str, when: &str) -> Error {
    let shown = crate::path::escape(reason);
    match code {
        // 1013 also refuses connections over the relay's limits: only a duplicate role
        // means someone else uses the code.
        Some(1013) if reason.is_empty() || reason.eq_ignore_ascii_case("duplicate role for code") => {
            Error::Peer {
                file: None,
                reason: "the relay closed the connection: duplicate role for code (someone else is using this code in the same role)".into(),
            }
        }
        Some(1013) => Error::Peer {
            file: None,
            reason: format!("the relay closed the connection: {}", crate::path::escape(reason)),
        },
        Some(1002) => Error::Peer {
            file: None,
            reason: format!("the relay refused the hello: {shown}"),
        },
        // A relay closes the partner of a connection that ended normally: the peer
        // went away (finished, killed, interrupted or cut off).
        Some(1000) => Error::ConnectionLost(format!(
            "the other side went away {when} (the relay closed the pair{})",
            if reason.is_empty() { String::new() } else { format!(": {shown}") }
        )),
        // The relay is stopping (SIGTERM): the connection is lost, whoever was paired.
        Some(1001) => Error::ConnectionLost(format!(
            "the relay closed the connection {when}: {}",
            crate::path::escape(if reason.is_empty() { "going away" } else { reason })
        )),
        // Without a close frame the relay's own connection broke.
        None if reason.is_empty() => Error::ConnectionLost(format!(
            "the relay connection dropped without a close frame (the relay stopped or the network failed), {when}"
        )),
        None => Error::ConnectionLost(format!(
            "the relay connection broke ({shown}), {when}"
        )),
        Some(code) => Error::Peer {
            file: None,
            reason: format!(
                "the connection closed {when} (close code {code}{})",
                if reason.is_empty() { String::new() } else { format!(": {shown}") }
            ),
        },
    }
}
