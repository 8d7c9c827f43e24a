//! Why a transfer failed, and the exit code that says so.

/// Why a transfer failed. The message is one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The relay could not be reached, the TLS or WebSocket handshake failed, or the
    /// relay refused the session.
    #[error("cannot use the relay: {0}")]
    Connect(String),
    /// The direct (QUIC) connection to the peer could not be made or used.
    #[error("no direct connection: {0}")]
    Direct(String),
    /// The session failed: the peer broke the protocol, data failed a check, local file
    /// access failed, or a deadline passed.
    #[error("{}", session_message(.0))]
    Session(p2p_copy_core::Error),
    /// A path given to the sender cannot be sent.
    #[error("{0}")]
    Source(String),
    /// The receiver's output directory cannot be used.
    #[error("{0}")]
    Output(String),
    /// A serverless peer is not who its ticket or the code says (or the peer refused
    /// this side for the same reason); nothing was transferred.
    #[error("{0}")]
    Unauthenticated(String),
}

fn session_message(e: &p2p_copy_core::Error) -> String {
    use p2p_copy_core::Error;
    match e {
        Error::Integrity { .. } => {
            format!("{e}; the data was damaged or tampered with on the way, run again (with --resume to keep the good part)")
        }
        Error::Io { .. } => format!("{e}; check the path, free space and permissions"),
        _ => e.to_string(),
    }
}

impl TransferError {
    /// The process exit code for this error: 2 relay or connection problem (also a room
    /// in use), 3 timeout
    /// (no peer: wrong code, mismatched `--encrypt`, different relay), 4 protocol
    /// violation by the peer, 5 integrity failure, 6 local I/O error, 7 connection lost
    /// (the peer or the relay went away), 8 not delivered (the peer reported a failure),
    /// 9 no direct path although one was required (`DirectMode::DirectOnly`, or a
    /// serverless peer never reached), 10 wrong code (the PAKE of a code like
    /// `7-guitar-rocket` did not confirm) or a serverless peer not authenticated (wrong
    /// code or ticket), 11 declined by the receiver's user, 12 the peer cannot do what
    /// the transfer needs (a file list over 2 MiB for p2p-copy 0.1.x), 130 interrupted,
    /// 1 for invalid settings.
    pub fn exit_code(&self) -> i32 {
        match self {
            TransferError::Connect(_) | TransferError::Direct(_) => 2,
            TransferError::Source(_) | TransferError::Output(_) => 6,
            TransferError::Unauthenticated(_) => 10,
            TransferError::Session(e) => match e.kind() {
                "room" => 2,
                "timeout" => 3,
                "peer" => 4,
                "integrity" => 5,
                "io" => 6,
                "cancelled" => 130,
                "lost" => 7,
                "undelivered" => 8,
                "direct" => 9,
                "wrong_code" => 10,
                "declined" => 11,
                "unsupported" => 12,
                _ => 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_copy_core::Error;

    #[test]
    fn exit_codes_follow_the_fault() {
        assert_eq!(TransferError::Connect("x".into()).exit_code(), 2);
        assert_eq!(
            TransferError::Session(Error::Timeout("t".into())).exit_code(),
            3
        );
        assert_eq!(
            TransferError::Session(Error::Cancelled("c".into())).exit_code(),
            130
        );
        assert_eq!(TransferError::Source("s".into()).exit_code(), 6);
        let integrity = Error::Integrity {
            file: Some("a".into()),
            reason: "chain mismatch".into(),
        };
        assert_eq!(TransferError::Session(integrity).exit_code(), 5);
        let lost = Error::ConnectionLost("the relay went away".into());
        assert_eq!(TransferError::Session(lost).exit_code(), 7);
        let undelivered = Error::NotDelivered("the receiver failed".into());
        assert_eq!(TransferError::Session(undelivered).exit_code(), 8);
        let direct = Error::NoDirectPath("none came up".into());
        assert_eq!(TransferError::Session(direct).exit_code(), 9);
        let wrong = Error::WrongCode("wrong code".into());
        assert_eq!(TransferError::Session(wrong).exit_code(), 10);
        let room = Error::RoomInUse("room 7 is in use".into());
        assert_eq!(TransferError::Session(room).exit_code(), 2);
        assert_eq!(TransferError::Unauthenticated("x".into()).exit_code(), 10);
        let declined = Error::Declined("the receiver declined".into());
        assert_eq!(TransferError::Session(declined).exit_code(), 11);
        let unsupported = Error::Unsupported("a stream".into());
        assert_eq!(TransferError::Session(unsupported).exit_code(), 12);
    }
}
