//! The relay connection of a code like `7-guitar-rocket`: open the WebSocket at the
//! room's path, run the core's PAKE ([`p2p_copy_core::pake`]) on it, and hand the
//! connection and the confirmed session key to the v1 session.

use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use p2p_copy_core::code::PakeCode;
use p2p_copy_core::crypto::Cipher;
use p2p_copy_core::pake::{Pake, PakeConfig};
use p2p_copy_core::wire::Role;
use p2p_copy_core::{Error, Secrets};

use crate::rt::Rt;
use crate::transport::{self, AlreadyPaired, Incoming, TransportError, WsTransport};
use crate::{ClientConfig, TransferError};

/// How long each step of the exchange may take once both sides are in the room.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay URL of a room: the relay's URL with `/r/<room-id>` appended to its path, so
/// that a load balancer can route both sides of a room to the same relay.
pub(crate) fn room_url(server: &str, room: &str) -> String {
    let (base, query) = match server.find(['?', '#']) {
        Some(i) => server.split_at(i),
        None => (server, ""),
    };
    format!("{}/r/{room}{query}", base.trim_end_matches('/'))
}

/// Connect to the room of `code` and run the exchange. On success the connection is
/// ready for the v1 session (its `hello` stays local, the sender's `ready` is replayed),
/// with the session key in the returned secrets; encryption is always on.
pub(crate) async fn open_room<R: Rt>(
    rt: &R,
    cfg: &ClientConfig,
    role: Role,
    code: &PakeCode,
    seed: [u8; 32],
) -> Result<(AlreadyPaired<WsTransport>, Secrets, Duration), TransferError> {
    let opening = Instant::now();
    let url = room_url(&cfg.server, &code.room_id());
    let ws = transport::connect(
        rt,
        &url,
        cfg.ca_file.as_deref(),
        cfg.proxy.as_deref(),
        cfg.relay_token.as_deref(),
        cfg.pair_timeout,
    )
    .await?;
    let opened_in = opening.elapsed();
    let mut conn = WsTransport(ws);
    let config = PakeConfig {
        pair_timeout: cfg.pair_timeout,
        step_timeout: STEP_TIMEOUT,
    };
    let mut pake = Pake::new(Instant::now(), role, code, seed, config);
    let failed = loop {
        let mut out = Vec::new();
        while let Some(m) = pake.poll_transmit() {
            out.push(m);
        }
        for m in out {
            if let Err(e) = transport::send(&mut conn, m).await {
                let e = pake.handle_close(None, &e.to_string());
                return Err(TransferError::Session(e));
            }
        }
        if let Some(keys) = pake.keys() {
            let secrets = Secrets {
                code_hash: [0; 32],
                cipher: Some(Cipher::new(&keys.session)),
            };
            let conn = match role {
                Role::Sender => AlreadyPaired::sender(conn),
                Role::Receiver => AlreadyPaired::receiver(conn),
            };
            return Ok((conn, secrets, opened_in));
        }
        let Some(deadline) = pake.poll_timeout() else {
            break Error::Misuse("the code exchange stopped without a result".into());
        };
        let next = select(
            Box::pin(transport::recv(&mut conn)),
            Box::pin(rt.sleep_until(deadline)),
        )
        .await;
        let now = Instant::now();
        let step = match next {
            Either::Right(_) => pake.handle_timeout(now),
            Either::Left((Some(Ok(Incoming::Message(m))), _)) => pake.handle_message(now, m),
            Either::Left((Some(Ok(Incoming::Close(frame))), _)) => {
                let (code, reason) = frame.unwrap_or((0, String::new()));
                Err(pake.handle_close((code != 0).then_some(code), &reason))
            }
            Either::Left((None, _)) => Err(pake.handle_close(None, "")),
            Either::Left((Some(Err(TransportError::Lost(why))), _)) => {
                Err(pake.handle_close(None, &why))
            }
            Either::Left((Some(Err(TransportError::Violation { reason, .. })), _)) => {
                Err(Error::peer(reason))
            }
        };
        if let Err(e) = step {
            break e;
        }
    };
    // Tell the other side (`pake_failed` when the code was wrong), then close.
    while let Some(m) = pake.poll_transmit() {
        if transport::send(&mut conn, m).await.is_err() {
            break;
        }
    }
    let _ = transport::close(&mut conn, 1000, "code exchange failed").await;
    Err(TransferError::Session(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_goes_into_the_url_path() {
        assert_eq!(room_url("ws://h:1", "ab"), "ws://h:1/r/ab");
        assert_eq!(room_url("wss://h/", "ab"), "wss://h/r/ab");
        assert_eq!(room_url("wss://h/relay", "ab"), "wss://h/relay/r/ab");
        assert_eq!(room_url("ws://h:1/?x=1", "ab"), "ws://h:1/r/ab?x=1");
    }
}
