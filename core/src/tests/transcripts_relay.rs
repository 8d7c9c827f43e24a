//! The relay fed connection events by hand: every pairing rule, with the exact outputs
//! (close codes and the reference relay's reasons).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::relay::{
    per_address_limit, per_address_peer_refusal, per_address_refusal, rate_refusal, ConnId,
    PairOutcome, RefusalKind, Relay, RelayConfig, RelayEvent, RelayOutput, RoomTag,
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TRY_AGAIN, SHUTTING_DOWN,
};
use crate::wire::{Control, Role};
use crate::WireMessage;

const HASH: &str = "ab12";

fn addr(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn hello(hash: &str, role: Role) -> WireMessage {
    Control::Hello {
        code_hash_hex: hash.into(),
        role,
    }
    .into()
}

fn outputs(r: &mut Relay) -> Vec<RelayOutput> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn events(r: &mut Relay) -> Vec<RelayEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn close(conn: u64, code: u16, reason: &'static str) -> RelayOutput {
    RelayOutput::Close {
        conn: ConnId(conn),
        code,
        reason: reason.into(),
    }
}

/// The tag the default configuration gives the room of `hash`, read from a pairing.
fn room_of(hash: &str) -> RoomTag {
    let now = Instant::now();
    let mut r = connected(2, now);
    r.handle_message(now, ConnId(1), hello(hash, Role::Sender));
    r.handle_message(now, ConnId(2), hello(hash, Role::Receiver));
    events(&mut r)
        .into_iter()
        .find_map(|e| match e {
            RelayEvent::Paired { room, .. } => Some(room),
            _ => None,
        })
        .expect("paired")
}

fn connected(n: u64, now: Instant) -> Relay {
    let mut r = Relay::new(RelayConfig::default());
    for i in 1..=n {
        assert!(r.handle_connect(now, ConnId(i), addr(1)));
    }
    assert!(outputs(&mut r).is_empty());
    r
}

fn refused_hello(msg: WireMessage, reason: &'static str) {
    let now = Instant::now();
    let mut r = connected(1, now);
    r.handle_message(now, ConnId(1), msg);
    assert_eq!(outputs(&mut r), vec![close(1, CLOSE_PROTOCOL, reason)]);
    assert_eq!(
        events(&mut r),
        vec![RelayEvent::Refused {
            conn: ConnId(1),
            reason: reason.into(),
            kind: RefusalKind::Protocol,
        }]
    );
    assert_eq!(r.waiting_count(), 0);
    // Closed connections say nothing more to the relay.
    r.handle_message(now, ConnId(1), hello(HASH, Role::Sender));
    assert!(outputs(&mut r).is_empty());
}

#[test]
fn binary_hello_is_closed_with_1002() {
    refused_hello(
        WireMessage::Binary(Bytes::from_static(b"{\"type\":\"hello\"}")),
        "First frame must be hello text",
    );
}

#[test]
fn hello_that_is_not_json_is_closed_with_1002() {
    for bad in ["hello", "{", "", "{\"type\":\"hello\",}"] {
        refused_hello(WireMessage::Text(bad.into()), "Bad hello json");
    }
}

#[test]
fn hello_of_another_type_is_closed_with_1002() {
    for bad in [
        r#"{"type":"manifest","code_hash_hex":"ab","role":"sender"}"#,
        r#"{"code_hash_hex":"ab","role":"sender"}"#,
        r#"{"type":"HELLO","code_hash_hex":"ab","role":"sender"}"#,
        r#"{"type":1}"#,
        "[1,2]",
        "\"hello\"",
        "null",
    ] {
        refused_hello(WireMessage::Text(bad.into()), "First frame must be hello");
    }
}

#[test]
fn hello_without_hash_or_with_a_bad_role_is_closed_with_1002() {
    for bad in [
        r#"{"type":"hello","role":"sender"}"#,
        r#"{"type":"hello","code_hash_hex":"","role":"sender"}"#,
        r#"{"type":"hello","code_hash_hex":null,"role":"receiver"}"#,
        r#"{"type":"hello","code_hash_hex":"ab"}"#,
        r#"{"type":"hello","code_hash_hex":"ab","role":"relay"}"#,
        r#"{"type":"hello","code_hash_hex":"ab","role":"Sender"}"#,
        r#"{"type":"hello","code_hash_hex":"ab","role":null}"#,
    ] {
        refused_hello(WireMessage::Text(bad.into()), "Bad hello");
    }
}

#[test]
fn hello_with_extra_keys_and_spaces_is_accepted() {
    let now = Instant::now();
    let mut r = connected(1, now);
    let m = r#" { "role" : "sender", "x": [1], "code_hash_hex": "ab12", "type": "hello" } "#;
    r.handle_message(now, ConnId(1), WireMessage::Text(m.into()));
    assert!(outputs(&mut r).is_empty());
    assert_eq!(r.waiting_count(), 1);
}

#[test]
fn the_first_client_of_a_code_waits_silently() {
    for role in [Role::Sender, Role::Receiver] {
        let now = Instant::now();
        let mut r = connected(1, now);
        r.handle_message(now, ConnId(1), hello(HASH, role));
        assert!(outputs(&mut r).is_empty());
        assert!(events(&mut r).is_empty());
        assert_eq!(r.waiting_count(), 1);
        assert_eq!(
            r.poll_timeout(),
            Some(now + RelayConfig::default().wait_timeout)
        );
    }
}

#[test]
fn pairing_sends_ready_to_the_sender_only_then_paired() {
    for sender_first in [true, false] {
        let now = Instant::now();
        let mut r = connected(2, now);
        let (first, second) = if sender_first {
            ((1, Role::Sender), (2, Role::Receiver))
        } else {
            ((2, Role::Receiver), (1, Role::Sender))
        };
        r.handle_message(now, ConnId(first.0), hello(HASH, first.1));
        r.handle_message(now, ConnId(second.0), hello(HASH, second.1));
        assert_eq!(
            outputs(&mut r),
            vec![
                RelayOutput::Send {
                    conn: ConnId(1),
                    msg: WireMessage::Text(r#"{"type":"ready"}"#.into()),
                },
                RelayOutput::Paired {
                    sender: ConnId(1),
                    receiver: ConnId(2),
                },
            ]
        );
        assert_eq!(
            events(&mut r),
            vec![RelayEvent::Paired {
                sender: ConnId(1),
                receiver: ConnId(2),
                room: room_of(HASH),
                waited: Duration::ZERO,
            }]
        );
        assert_eq!(r.waiting_count(), 0);
        assert_eq!(
            r.poll_timeout(),
            None,
            "paired connections have no deadline"
        );
    }
}

#[test]
fn different_codes_do_not_pair() {
    let now = Instant::now();
    let mut r = connected(2, now);
    r.handle_message(now, ConnId(1), hello("aa", Role::Sender));
    r.handle_message(now, ConnId(2), hello("bb", Role::Receiver));
    assert!(outputs(&mut r).is_empty());
    assert_eq!(r.waiting_count(), 2);
}

#[test]
fn messages_of_paired_connections_are_left_to_the_runtime() {
    let now = Instant::now();
    let mut r = paired(now);
    r.handle_message(
        now,
        ConnId(1),
        WireMessage::Binary(Bytes::from_static(b"x")),
    );
    r.handle_message(now, ConnId(2), WireMessage::Text("anything".into()));
    assert!(outputs(&mut r).is_empty());
}

#[test]
fn a_newcomer_in_an_occupied_room_is_refused_and_the_waiting_client_keeps_it() {
    let room = crate::code::room_id(7);
    for role in [Role::Sender, Role::Receiver] {
        let now = Instant::now();
        let mut r = connected(3, now);
        r.handle_message(now, ConnId(1), hello(&room, role));
        r.handle_message(now, ConnId(2), hello(&room, role));
        assert_eq!(
            outputs(&mut r),
            vec![close(2, CLOSE_TRY_AGAIN, "Duplicate role for code")]
        );
        assert_eq!(r.waiting_count(), 1);
        // The first client still pairs.
        r.handle_message(now, ConnId(3), hello(&room, role.other()));
        let out = outputs(&mut r);
        assert!(
            out.iter().any(|o| matches!(o, RelayOutput::Paired { .. })),
            "{out:?}"
        );
        assert_eq!(r.waiting_count(), 0, "the room is free again once paired");
    }
}

#[test]
fn a_duplicate_role_closes_both_with_1013() {
    for role in [Role::Sender, Role::Receiver] {
        let now = Instant::now();
        let mut r = connected(3, now);
        r.handle_message(now, ConnId(1), hello(HASH, role));
        r.handle_message(now, ConnId(2), hello(HASH, role));
        assert_eq!(
            outputs(&mut r),
            vec![
                close(1, CLOSE_TRY_AGAIN, "Duplicate role for code"),
                close(2, CLOSE_TRY_AGAIN, "Duplicate role for code"),
            ]
        );
        assert_eq!(r.waiting_count(), 0);
        // The code is free again: a third client waits instead of pairing with a closed one.
        r.handle_message(now, ConnId(3), hello(HASH, role.other()));
        assert!(outputs(&mut r).is_empty());
        assert_eq!(r.waiting_count(), 1);
    }
}

fn paired(now: Instant) -> Relay {
    let mut r = connected(2, now);
    r.handle_message(now, ConnId(1), hello(HASH, Role::Sender));
    r.handle_message(now, ConnId(2), hello(HASH, Role::Receiver));
    outputs(&mut r);
    events(&mut r);
    r
}

#[test]
fn a_departing_side_closes_its_partner_then_aborts_it_a_grace_after_its_queue_drained() {
    for (gone, partner) in [(1u64, 2u64), (2, 1)] {
        let now = Instant::now();
        let mut r = paired(now);
        let later = now + Duration::from_secs(7);
        r.handle_disconnect(later, ConnId(gone));
        assert_eq!(
            outputs(&mut r),
            vec![close(partner, CLOSE_NORMAL, "peer closed")]
        );
        assert_eq!(
            events(&mut r),
            vec![RelayEvent::PairEnded {
                sender: ConnId(1),
                receiver: ConnId(2),
                lasted: Duration::from_secs(7),
                room: room_of(HASH),
                outcome: PairOutcome::Lost,
            }]
        );
        let drain = RelayConfig::default().drain_timeout;
        assert_eq!(r.poll_timeout(), Some(later + drain));
        // What was queued for the partner is delivered two seconds later: from then on
        // only the short grace remains.
        let flushed = later + Duration::from_secs(2);
        r.handle_flushed(flushed, ConnId(partner));
        let grace = RelayConfig::default().close_grace;
        assert_eq!(r.poll_timeout(), Some(flushed + grace));
        r.handle_timeout(flushed + grace - Duration::from_millis(1));
        assert!(outputs(&mut r).is_empty(), "nothing before the grace ends");
        r.handle_timeout(flushed + grace);
        assert_eq!(
            outputs(&mut r),
            vec![RelayOutput::Abort {
                conn: ConnId(partner)
            }]
        );
        assert_eq!(r.connection_count(), 0);
        assert_eq!(r.poll_timeout(), None);
    }
}

#[test]
fn a_partner_that_leaves_within_the_grace_is_not_aborted() {
    let now = Instant::now();
    let mut r = paired(now);
    r.handle_disconnect(now, ConnId(1));
    outputs(&mut r);
    r.handle_disconnect(now, ConnId(2));
    assert!(outputs(&mut r).is_empty());
    r.handle_timeout(now + Duration::from_secs(60));
    assert!(outputs(&mut r).is_empty());
    assert_eq!(r.connection_count(), 0);
}

#[test]
fn no_hello_in_time_is_closed_with_1008_then_aborted() {
    let now = Instant::now();
    let mut r = connected(1, now);
    let hello_timeout = RelayConfig::default().hello_timeout;
    assert_eq!(r.poll_timeout(), Some(now + hello_timeout));
    r.handle_timeout(now + hello_timeout - Duration::from_millis(1));
    assert!(outputs(&mut r).is_empty());
    r.handle_timeout(now + hello_timeout);
    assert_eq!(
        outputs(&mut r),
        vec![close(1, CLOSE_POLICY, "no hello in time")]
    );
    let grace = RelayConfig::default().close_grace;
    r.handle_timeout(now + hello_timeout + grace);
    assert_eq!(
        outputs(&mut r),
        vec![RelayOutput::Abort { conn: ConnId(1) }]
    );
    assert_eq!(r.connection_count(), 0);
}

#[test]
fn no_peer_in_time_is_closed_with_1008_and_frees_the_code() {
    let now = Instant::now();
    let mut r = connected(1, now);
    r.handle_message(now, ConnId(1), hello(HASH, Role::Sender));
    let wait = RelayConfig::default().wait_timeout;
    r.handle_timeout(now + wait - Duration::from_millis(1));
    assert!(outputs(&mut r).is_empty());
    r.handle_timeout(now + wait);
    assert_eq!(
        outputs(&mut r),
        vec![close(1, CLOSE_POLICY, "no peer joined in time")]
    );
    assert_eq!(r.waiting_count(), 0);
    // A receiver arriving now waits rather than pairing with the closed sender.
    assert!(r.handle_connect(now + wait, ConnId(2), addr(1)));
    r.handle_message(now + wait, ConnId(2), hello(HASH, Role::Receiver));
    assert!(outputs(&mut r).is_empty());
    assert_eq!(r.waiting_count(), 1);
}

#[test]
fn a_message_from_a_waiting_client_is_closed_with_1002() {
    let now = Instant::now();
    let mut r = connected(1, now);
    r.handle_message(now, ConnId(1), hello(HASH, Role::Receiver));
    r.handle_message(now, ConnId(1), WireMessage::Text("{}".into()));
    assert_eq!(
        outputs(&mut r),
        vec![close(1, CLOSE_PROTOCOL, "message before a peer joined")]
    );
    assert_eq!(r.waiting_count(), 0);
}

#[test]
fn a_waiting_client_that_leaves_frees_the_code() {
    let now = Instant::now();
    let mut r = connected(3, now);
    r.handle_message(now, ConnId(1), hello(HASH, Role::Sender));
    r.handle_disconnect(now, ConnId(1));
    assert_eq!(r.waiting_count(), 0);
    r.handle_message(now, ConnId(2), hello(HASH, Role::Sender));
    assert!(outputs(&mut r).is_empty(), "no duplicate-role close");
    r.handle_message(now, ConnId(3), hello(HASH, Role::Receiver));
    assert!(matches!(
        outputs(&mut r).as_slice(),
        [
            RelayOutput::Send {
                conn: ConnId(2),
                ..
            },
            RelayOutput::Paired { .. }
        ]
    ));
}

#[test]
fn connections_over_the_per_address_limit_are_refused_with_1013() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig {
        max_per_address: 2,
        ..RelayConfig::default()
    });
    assert!(r.handle_connect(now, ConnId(1), addr(1)));
    assert!(r.handle_connect(now, ConnId(2), addr(1)));
    assert!(!r.handle_connect(now, ConnId(3), addr(1)));
    assert_eq!(
        outputs(&mut r),
        vec![close(
            3,
            CLOSE_TRY_AGAIN,
            "too many connections from this address (the relay allows 2 per address)"
        )]
    );
    assert!(
        r.handle_connect(now, ConnId(4), addr(2)),
        "another address is fine"
    );
    assert_eq!(r.connection_count(), 3);
    r.handle_disconnect(now, ConnId(1));
    assert!(
        r.handle_connect(now, ConnId(5), addr(1)),
        "room again after a disconnect"
    );
    assert!(outputs(&mut r).is_empty());
}

#[test]
fn the_per_address_refusal_names_the_limit_for_clients_to_read() {
    assert_eq!(per_address_limit(&per_address_refusal(64)), Some(64));
    assert_eq!(per_address_limit(&per_address_peer_refusal(3)), Some(3));
    assert_eq!(per_address_limit("Duplicate role for code"), None);
}

#[test]
fn the_hello_of_a_connection_over_the_per_address_limit_closes_its_waiting_peer() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig {
        max_per_address: 1,
        ..RelayConfig::default()
    });
    // The receiver of session 1 of a parallel code waits, from another address.
    assert!(r.handle_connect(now, ConnId(1), addr(2)));
    r.handle_message(now, ConnId(1), hello("h1", Role::Receiver));
    // The sender's session 0 fits; its session 1 is over the limit.
    assert!(r.handle_connect(now, ConnId(2), addr(1)));
    assert!(!r.handle_connect(now, ConnId(3), addr(1)));
    assert_eq!(
        outputs(&mut r),
        vec![close(
            3,
            CLOSE_TRY_AGAIN,
            "too many connections from this address (the relay allows 1 per address)"
        )]
    );
    // A hello for another code, or a second hello, changes nothing.
    r.handle_message(now, ConnId(3), hello("other", Role::Sender));
    r.handle_message(now, ConnId(3), hello("h1", Role::Sender));
    assert!(outputs(&mut r).is_empty());
    assert_eq!(r.waiting_count(), 1);

    assert!(!r.handle_connect(now, ConnId(4), addr(1)));
    let _ = outputs(&mut r);
    r.handle_message(now, ConnId(4), hello("h1", Role::Sender));
    assert_eq!(
        outputs(&mut r),
        vec![close(
            1,
            CLOSE_TRY_AGAIN,
            "the peer's connection for this code was refused: too many connections from its address (the relay allows 1 per address)"
        )]
    );
    assert_eq!(r.waiting_count(), 0);
}

#[test]
fn connections_over_the_total_limit_are_refused_with_1013() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig {
        max_connections: 3,
        ..RelayConfig::default()
    });
    for i in 1..=3 {
        assert!(r.handle_connect(now, ConnId(i), addr(i as u8)));
    }
    assert!(!r.handle_connect(now, ConnId(4), addr(9)));
    assert_eq!(
        outputs(&mut r),
        vec![close(
            4,
            CLOSE_TRY_AGAIN,
            "relay is at its connection limit"
        )]
    );
    assert_eq!(r.connection_count(), 3);
    // A refused connection is not tracked: its disconnect changes nothing.
    r.handle_disconnect(now, ConnId(4));
    assert_eq!(r.connection_count(), 3);
    r.handle_disconnect(now, ConnId(2));
    assert!(r.handle_connect(now, ConnId(5), addr(9)));
}

#[test]
fn refused_and_timed_out_connections_release_their_address_slot() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig {
        max_per_address: 1,
        ..RelayConfig::default()
    });
    assert!(r.handle_connect(now, ConnId(1), addr(1)));
    r.handle_message(now, ConnId(1), WireMessage::Text("bad".into()));
    outputs(&mut r);
    let grace = RelayConfig::default().close_grace;
    r.handle_timeout(now + grace);
    assert_eq!(
        outputs(&mut r),
        vec![RelayOutput::Abort { conn: ConnId(1) }]
    );
    assert!(r.handle_connect(now + grace, ConnId(2), addr(1)));
}

#[test]
fn thousands_of_idle_connections_are_all_closed_by_the_hello_timeout() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig::default());
    for i in 0..2000u64 {
        assert!(r.handle_connect(now, ConnId(i), addr((i % 200) as u8 + 1)));
    }
    r.handle_timeout(now + RelayConfig::default().hello_timeout);
    let closes = outputs(&mut r)
        .into_iter()
        .filter(|o| {
            matches!(
                o,
                RelayOutput::Close {
                    code: CLOSE_POLICY,
                    ..
                }
            )
        })
        .count();
    assert_eq!(closes, 2000);
    r.handle_timeout(now + Duration::from_secs(60));
    assert_eq!(r.connection_count(), 0);
}

#[test]
fn a_partner_that_never_drains_is_aborted_at_the_drain_timeout() {
    let now = Instant::now();
    let mut r = paired(now);
    r.handle_disconnect(now, ConnId(1));
    outputs(&mut r);
    let drain = RelayConfig::default().drain_timeout;
    r.handle_timeout(now + drain - Duration::from_millis(1));
    assert!(
        outputs(&mut r).is_empty(),
        "a slow reader keeps its pair until the drain timeout"
    );
    r.handle_timeout(now + drain);
    assert_eq!(
        outputs(&mut r),
        vec![RelayOutput::Abort { conn: ConnId(2) }]
    );
}

fn ended(r: &mut Relay) -> Vec<(PairOutcome, RoomTag)> {
    events(r)
        .into_iter()
        .filter_map(|e| match e {
            RelayEvent::PairEnded { outcome, room, .. } => Some((outcome, room)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_pairing_event_says_how_long_the_first_side_waited() {
    let now = Instant::now();
    let mut r = connected(2, now);
    r.handle_message(now, ConnId(2), hello(HASH, Role::Receiver));
    let later = now + Duration::from_millis(1500);
    r.handle_message(later, ConnId(1), hello(HASH, Role::Sender));
    let waited: Vec<Duration> = events(&mut r)
        .into_iter()
        .filter_map(|e| match e {
            RelayEvent::Paired { waited, .. } => Some(waited),
            _ => None,
        })
        .collect();
    assert_eq!(waited, [Duration::from_millis(1500)]);
}

#[test]
fn room_tags_are_salted_and_never_show_the_code_hash() {
    let a = room_of("ab12");
    assert_eq!(a, room_of("ab12"), "the same room gets the same tag");
    assert_ne!(a, room_of("ab13"));
    let shown = a.to_string();
    assert_eq!(shown.len(), 8);
    assert!(!shown.contains("ab12"));
    let now = Instant::now();
    let mut salted = Relay::new(RelayConfig {
        room_salt: [1; 16],
        ..RelayConfig::default()
    });
    for i in 1..=2 {
        salted.handle_connect(now, ConnId(i), addr(1));
    }
    salted.handle_message(now, ConnId(1), hello("ab12", Role::Sender));
    salted.handle_message(now, ConnId(2), hello("ab12", Role::Receiver));
    let other_salt = events(&mut salted).into_iter().find_map(|e| match e {
        RelayEvent::Paired { room, .. } => Some(room),
        _ => None,
    });
    assert_ne!(other_salt, Some(a), "another salt, another tag");
}

#[test]
fn a_pair_whose_first_leaver_closed_normally_completed_otherwise_it_was_lost() {
    let now = Instant::now();
    let mut r = paired(now);
    events(&mut r);
    r.handle_client_close(ConnId(1), CLOSE_NORMAL);
    r.handle_disconnect(now, ConnId(1));
    assert_eq!(ended(&mut r), [(PairOutcome::Completed, room_of(HASH))]);

    for code in [None, Some(1011)] {
        let mut r = paired(now);
        events(&mut r);
        if let Some(code) = code {
            r.handle_client_close(ConnId(2), code);
        }
        r.handle_disconnect(now, ConnId(2));
        assert_eq!(ended(&mut r), [(PairOutcome::Lost, room_of(HASH))]);
        // The partner's own normal close afterwards changes nothing.
        r.handle_client_close(ConnId(1), CLOSE_NORMAL);
        r.handle_disconnect(now, ConnId(1));
        assert!(ended(&mut r).is_empty());
    }
}

#[test]
fn a_pair_closed_for_a_limit_closes_both_with_the_reason_and_ends_once() {
    let now = Instant::now();
    let mut r = paired(now);
    events(&mut r);
    r.close_pair(now, ConnId(2), "over the limit");
    assert_eq!(
        outputs(&mut r),
        vec![
            close(2, CLOSE_POLICY, "over the limit"),
            close(1, CLOSE_POLICY, "over the limit"),
        ]
    );
    assert_eq!(ended(&mut r), [(PairOutcome::Limit, room_of(HASH))]);
    r.handle_disconnect(now, ConnId(1));
    r.handle_disconnect(now, ConnId(2));
    assert!(ended(&mut r).is_empty());
    assert!(outputs(&mut r).is_empty());
    assert!(r.is_empty());
    // An unpaired connection is not closed by it.
    let mut r = connected(1, now);
    r.close_pair(now, ConnId(1), "over the limit");
    assert!(outputs(&mut r).is_empty());
}

#[test]
fn new_connections_per_address_are_limited_per_minute_then_refill() {
    let now = Instant::now();
    let mut r = Relay::new(RelayConfig {
        max_new_per_minute: Some(3),
        ..RelayConfig::default()
    });
    for i in 1..=3 {
        assert!(r.handle_connect(now, ConnId(i), addr(1)));
        r.handle_disconnect(now, ConnId(i));
    }
    assert!(!r.handle_connect(now, ConnId(4), addr(1)));
    let reason = rate_refusal(3);
    assert_eq!(
        outputs(&mut r),
        vec![RelayOutput::Close {
            conn: ConnId(4),
            code: CLOSE_TRY_AGAIN,
            reason: reason.clone().into(),
        }]
    );
    assert!(reason.contains("3 a minute"), "{reason}");
    assert_eq!(
        events(&mut r),
        vec![RelayEvent::Refused {
            conn: ConnId(4),
            reason: reason.into(),
            kind: RefusalKind::RateLimit,
        }]
    );
    // Another address is not held back.
    assert!(r.handle_connect(now, ConnId(5), addr(2)));
    // An IPv6 host counts per /64: a fresh address in the same /64 is no way around it.
    let v6 = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
    for i in 0..3u16 {
        assert!(r.handle_connect(now, ConnId(100 + u64::from(i)), v6(i)));
    }
    assert!(!r.handle_connect(now, ConnId(103), v6(3)));
    // One connection's worth comes back after a third of the minute.
    let later = now + Duration::from_secs(20);
    assert!(r.handle_connect(later, ConnId(6), addr(1)));
    assert!(!r.handle_connect(later, ConnId(7), addr(1)));
}

#[test]
fn shutdown_closes_unpaired_connections_at_once_and_pairs_at_the_drain_deadline() {
    let now = Instant::now();
    let mut r = paired(now);
    for i in 3..=4 {
        assert!(r.handle_connect(now, ConnId(i), addr(1)));
    }
    r.handle_message(now, ConnId(3), hello("other", Role::Sender));
    events(&mut r);
    outputs(&mut r);
    let drain = Duration::from_secs(30);
    r.handle_shutdown(now, drain);
    assert_eq!(
        outputs(&mut r),
        vec![
            close(3, CLOSE_GOING_AWAY, SHUTTING_DOWN),
            close(4, CLOSE_GOING_AWAY, SHUTTING_DOWN),
        ]
    );
    assert!(events(&mut r).iter().all(|e| matches!(
        e,
        RelayEvent::Refused {
            kind: RefusalKind::ShuttingDown,
            ..
        }
    )));
    // No one new gets in.
    assert!(!r.handle_connect(now, ConnId(5), addr(2)));
    assert_eq!(
        outputs(&mut r),
        vec![close(5, CLOSE_GOING_AWAY, SHUTTING_DOWN)]
    );
    assert_eq!(r.paired_count(), 1);
    assert!(r.poll_timeout().is_some_and(|t| t <= now + drain));
    r.handle_timeout(now + drain);
    assert_eq!(
        outputs(&mut r)
            .into_iter()
            .filter(|o| matches!(o, RelayOutput::Close { .. }))
            .collect::<Vec<_>>(),
        vec![
            close(1, CLOSE_GOING_AWAY, SHUTTING_DOWN),
            close(2, CLOSE_GOING_AWAY, SHUTTING_DOWN),
        ]
    );
    assert_eq!(ended(&mut r), [(PairOutcome::ShuttingDown, room_of(HASH))]);
    for i in 1..=5 {
        r.handle_disconnect(now + drain, ConnId(i));
    }
    assert!(r.is_empty());
    assert_eq!(r.poll_timeout(), None, "nothing left to wake up for");
}

#[test]
fn a_pair_that_ends_during_the_drain_is_not_closed_by_it() {
    let now = Instant::now();
    let mut r = paired(now);
    events(&mut r);
    r.handle_shutdown(now, Duration::from_secs(30));
    assert!(outputs(&mut r).is_empty(), "the pair runs on");
    r.handle_client_close(ConnId(1), CLOSE_NORMAL);
    r.handle_disconnect(now + Duration::from_secs(2), ConnId(1));
    assert_eq!(ended(&mut r), [(PairOutcome::Completed, room_of(HASH))]);
    r.handle_disconnect(now + Duration::from_secs(2), ConnId(2));
    r.handle_timeout(now + Duration::from_secs(30));
    assert!(ended(&mut r).is_empty());
    assert!(r.is_empty());
}

#[test]
fn a_second_shutdown_can_only_bring_the_drain_deadline_closer() {
    let now = Instant::now();
    let mut r = paired(now);
    r.handle_shutdown(now, Duration::from_secs(30));
    r.handle_shutdown(now, Duration::from_secs(60));
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(30)));
    let later = now + Duration::from_secs(3);
    r.handle_shutdown(later, Duration::ZERO);
    assert_eq!(
        outputs(&mut r),
        vec![
            close(1, CLOSE_GOING_AWAY, SHUTTING_DOWN),
            close(2, CLOSE_GOING_AWAY, SHUTTING_DOWN),
        ]
    );
    assert_eq!(ended(&mut r), [(PairOutcome::ShuttingDown, room_of(HASH))]);
    assert_eq!(r.paired_count(), 0);
}
