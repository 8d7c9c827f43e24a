//! Delivery confirmation between two peers of this project (extension
//! [`EXT_CONFIRM`](crate::wire::EXT_CONFIRM)): the end-of-session [`Report`] each side
//! sends, sealed under the session key when encrypting.
//!
//! A report does not take a nonce from the session's running chain: a side that fails
//! mid-file may be ahead of or behind its peer there. It uses a nonce of its own,
//! SHA-256 of a label naming the side that sends it and of the session's nonce seed S,
//! so each side seals at most one message under it per session.

use sha2::{Digest, Sha256};

use crate::crypto::Cipher;
use crate::wire::{self, Control, Report, Role};
use crate::Error;

/// The nonce of the report `from` sends in the session whose seed is `seed`.
fn report_nonce(seed: &[u8; 32], from: Role) -> [u8; 32] {
    let label: &[u8] = match from {
        Role::Sender => b"p2p-copy report from the sender",
        Role::Receiver => b"p2p-copy report from the receiver",
    };
    let mut h = Sha256::new();
    h.update(label);
    h.update(seed);
    h.finalize().into()
}

/// The message that carries `report` from `from`: [`Control::Report`], or
/// [`Control::EncReport`] when `sealing` holds the session's cipher and seed.
pub(crate) fn report_message(
    report: Report,
    from: Role,
    sealing: Option<(&Cipher, &[u8; 32])>,
) -> Control {
    let plain = Control::Report(report);
    match sealing {
        None => plain,
        Some((cipher, seed)) => Control::EncReport {
            hidden_report: wire::hex(
                &cipher.seal(&report_nonce(seed, from), plain.to_json().as_bytes()),
            ),
        },
    }
}

/// The report in `msg`, sent by `from`. An encrypting side accepts only
/// [`Control::EncReport`], a plain side only [`Control::Report`].
///
/// # Errors
/// [`Error::Peer`] for the wrong form or a malformed report, [`Error::Integrity`] for
/// one that does not decrypt.
pub(crate) fn open_report(
    msg: Control,
    from: Role,
    sealing: Option<(&Cipher, &[u8; 32])>,
) -> Result<Report, Error> {
    match (msg, sealing) {
        (Control::Report(r), None) => Ok(r),
        (Control::EncReport { hidden_report }, Some((cipher, seed))) => {
            let sealed =
                wire::unhex(&hidden_report).ok_or_else(|| Error::peer("enc_report is not hex"))?;
            let plain = cipher
                .open(&report_nonce(seed, from), &sealed)
                .ok_or_else(|| Error::integrity("the peer's report does not decrypt"))?;
            let text = String::from_utf8(plain)
                .map_err(|_| Error::peer("the peer's report is not UTF-8"))?;
            match Control::parse(&text)? {
                Control::Report(r) => Ok(r),
                other => Err(Error::peer(format!(
                    "encrypted report holds a {} message",
                    other.type_name()
                ))),
            }
        }
        (other, _) => Err(Error::peer(format!(
            "{} message where an {} report was expected",
            other.type_name(),
            if sealing.is_some() {
                "encrypted"
            } else {
                "unencrypted"
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FailedFile;

    fn sample() -> Report {
        Report {
            ok: true,
            delivered: 2,
            failed: vec![FailedFile {
                path: "a/b".into(),
                reason: "Is a directory".into(),
            }],
            error: None,
        }
    }

    #[test]
    fn a_sealed_report_opens_only_as_the_side_that_sent_it() {
        let cipher = Cipher::new(&[3; 32]);
        let seed = [9; 32];
        let msg = report_message(sample(), Role::Receiver, Some((&cipher, &seed)));
        assert!(matches!(msg, Control::EncReport { .. }));
        assert_eq!(
            open_report(msg.clone(), Role::Receiver, Some((&cipher, &seed))).unwrap(),
            sample()
        );
        let e = open_report(msg.clone(), Role::Sender, Some((&cipher, &seed))).unwrap_err();
        assert_eq!(e.kind(), "integrity");
        let e = open_report(msg, Role::Receiver, Some((&cipher, &[8; 32]))).unwrap_err();
        assert_eq!(e.kind(), "integrity");
    }

    #[test]
    fn a_plain_report_is_refused_when_encrypting_and_the_reverse() {
        let cipher = Cipher::new(&[3; 32]);
        let seed = [9; 32];
        let plain = report_message(sample(), Role::Receiver, None);
        assert_eq!(
            plain.to_json(),
            r#"{"type":"report","ok":true,"delivered":2,"failed":[{"path":"a/b","reason":"Is a directory"}]}"#
        );
        let e = open_report(plain, Role::Receiver, Some((&cipher, &seed))).unwrap_err();
        assert_eq!(e.kind(), "peer");
        let sealed = report_message(sample(), Role::Receiver, Some((&cipher, &seed)));
        assert_eq!(
            open_report(sealed, Role::Receiver, None)
                .unwrap_err()
                .kind(),
            "peer"
        );
    }
}
