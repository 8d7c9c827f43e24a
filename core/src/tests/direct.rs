//! Candidate exchange and path choice (extension `direct`): transcripts of each role fed
//! by hand, plain and encrypted, the limits and refusals, deadlines on a simulated
//! clock, and property tests over arbitrary message sequences.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::crypto::Cipher;
use crate::direct::{
    self, Action, Candidate, DirectConfig, DirectEvent, DirectMode, DirectPath, MAX_CANDIDATES,
};
use crate::wire::{CandidateEntry, CandidateKind, CandidateList, Control, Role};

const SENDER_FP: [u8; 32] = [0xaa; 32];
const RECEIVER_FP: [u8; 32] = [0xbb; 32];
const SEED: [u8; 32] = [7; 32];
const RELAY: &str = "198.51.100.1:9000";

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> DirectConfig {
    DirectConfig {
        relay_addrs: vec![a(RELAY)],
        ..DirectConfig::default()
    }
}

fn host(s: &str) -> Candidate {
    Candidate {
        addr: a(s),
        kind: CandidateKind::Host,
    }
}

fn srflx(s: &str) -> Candidate {
    Candidate {
        addr: a(s),
        kind: CandidateKind::Srflx,
    }
}

fn sealing() -> Option<(Cipher, [u8; 32])> {
    Some((Cipher::new(&[3; 32]), SEED))
}

fn machine(now: Instant, role: Role, cfg: DirectConfig, enc: bool) -> DirectPath {
    let (fp, cands) = match role {
        Role::Sender => (
            SENDER_FP,
            vec![host("192.168.1.10:40000"), srflx("203.0.113.5:40000")],
        ),
        Role::Receiver => (
            RECEIVER_FP,
            vec![host("10.0.0.7:41000"), srflx("203.0.113.9:41000")],
        ),
    };
    DirectPath::new(
        now,
        cfg,
        role,
        fp,
        &cands,
        if enc { sealing() } else { None },
    )
    .unwrap()
}

fn list(fp: [u8; 32], addrs: &[&str]) -> Control {
    Control::Candidates(CandidateList {
        attempt: 1,
        fingerprint: crate::wire::hex(&fp),
        candidates: addrs
            .iter()
            .map(|s| CandidateEntry {
                addr: (*s).to_owned(),
                kind: CandidateKind::Host,
            })
            .collect(),
    })
}

fn json(d: &mut DirectPath) -> Vec<String> {
    std::iter::from_fn(|| d.poll_transmit())
        .map(|c| c.to_json())
        .collect()
}

fn actions(d: &mut DirectPath) -> Vec<Action> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn events(d: &mut DirectPath) -> Vec<DirectEvent> {
    std::iter::from_fn(|| d.poll_event()).collect()
}

fn probe(s: &str) -> Action {
    Action::Probe { addr: a(s) }
}

fn kind_of(e: crate::Error) -> &'static str {
    e.kind()
}

#[test]
fn sender_transcript_plain() {
    let t = Instant::now();
    let mut s = machine(t, Role::Sender, config(), false);
    assert_eq!(
        json(&mut s),
        [format!(
            r#"{{"type":"candidates","attempt":1,"fingerprint":"{}","candidates":[{{"addr":"192.168.1.10:40000","kind":"host"}},{{"addr":"203.0.113.5:40000","kind":"srflx"}}]}}"#,
            "aa".repeat(32)
        )]
    );
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));

    s.handle_message(
        t,
        list(RECEIVER_FP, &["10.0.0.7:41000", "203.0.113.9:41000"]),
    )
    .unwrap();
    assert_eq!(json(&mut s), Vec::<String>::new());
    assert_eq!(
        actions(&mut s),
        [probe("10.0.0.7:41000"), probe("203.0.113.9:41000")]
    );
    s.handle_probe_result(t, a("10.0.0.7:41000"), Err("timed out".into()))
        .unwrap();
    s.handle_probe_result(t, a("203.0.113.9:41000"), Ok(RECEIVER_FP))
        .unwrap();
    // Verified, but the receiver has not said it is ready: nothing moves yet.
    assert_eq!((json(&mut s), actions(&mut s)), (vec![], vec![]));

    s.handle_message(
        t,
        Control::parse(r#"{"type":"direct_ready","attempt":1}"#).unwrap(),
    )
    .unwrap();
    assert_eq!(json(&mut s), [r#"{"type":"direct_ready","attempt":1}"#]);
    assert_eq!(
        actions(&mut s),
        [Action::Switch {
            addr: a("203.0.113.9:41000")
        }]
    );
    assert_eq!(s.switched_to(), Some(a("203.0.113.9:41000")));
    assert_eq!(s.poll_timeout(), None);
    assert!(s.is_finished());
    assert_eq!(
        events(&mut s),
        [
            DirectEvent::CandidatesReceived {
                usable: vec![a("10.0.0.7:41000"), a("203.0.113.9:41000")],
                ignored: vec![]
            },
            DirectEvent::ProbeFailed {
                addr: a("10.0.0.7:41000"),
                reason: "timed out".into()
            },
            DirectEvent::ProbeVerified {
                addr: a("203.0.113.9:41000")
            },
            DirectEvent::Switched {
                addr: a("203.0.113.9:41000")
            },
        ]
    );
    // Nothing the deadline does changes a decision.
    s.handle_timeout(t + Duration::from_secs(60)).unwrap();
    assert_eq!((json(&mut s), actions(&mut s)), (vec![], vec![]));
}

#[test]
fn receiver_transcript_plain() {
    let t = Instant::now();
    let mut r = machine(t, Role::Receiver, config(), false);
    assert_eq!(
        json(&mut r),
        [format!(
            r#"{{"type":"candidates","attempt":1,"fingerprint":"{}","candidates":[{{"addr":"10.0.0.7:41000","kind":"host"}},{{"addr":"203.0.113.9:41000","kind":"srflx"}}]}}"#,
            "bb".repeat(32)
        )]
    );
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    assert_eq!(actions(&mut r), [probe("192.168.1.10:40000")]);
    let later = t + Duration::from_secs(1);
    r.handle_probe_result(later, a("192.168.1.10:40000"), Ok(SENDER_FP))
        .unwrap();
    assert_eq!(json(&mut r), [r#"{"type":"direct_ready","attempt":1}"#]);
    assert_eq!(actions(&mut r), []);
    // Ready: the receiver follows the sender's verdict, it has no deadline of its own.
    assert_eq!(r.poll_timeout(), None);
    r.handle_timeout(t + Duration::from_secs(30)).unwrap();
    assert_eq!((json(&mut r), actions(&mut r)), (vec![], vec![]));

    r.handle_message(later, Control::DirectReady { attempt: 1 })
        .unwrap();
    assert_eq!(json(&mut r), Vec::<String>::new());
    assert_eq!(
        actions(&mut r),
        [Action::Switch {
            addr: a("192.168.1.10:40000")
        }]
    );
}

/// Two machines wired to each other through a relay that only forwards.
fn exchange(enc: bool) -> (DirectPath, DirectPath, Vec<Control>) {
    let t = Instant::now();
    let mut s = machine(t, Role::Sender, config(), enc);
    let mut r = machine(t, Role::Receiver, config(), enc);
    let mut seen = Vec::new();
    let pump = |s: &mut DirectPath, r: &mut DirectPath, seen: &mut Vec<Control>| loop {
        let quiet = seen.len();
        while let Some(m) = s.poll_transmit() {
            seen.push(m.clone());
            r.handle_message(t, m).unwrap();
        }
        while let Some(m) = r.poll_transmit() {
            seen.push(m.clone());
            s.handle_message(t, m).unwrap();
        }
        if seen.len() == quiet {
            break;
        }
    };
    pump(&mut s, &mut r, &mut seen);
    assert_eq!(
        actions(&mut s),
        [probe("10.0.0.7:41000"), probe("203.0.113.9:41000")]
    );
    assert_eq!(
        actions(&mut r),
        [probe("192.168.1.10:40000"), probe("203.0.113.5:40000")]
    );
    // One QUIC connection from the sender's side, seen at each end.
    s.handle_probe_result(t, a("203.0.113.9:41000"), Ok(RECEIVER_FP))
        .unwrap();
    r.handle_probe_result(t, a("203.0.113.5:40000"), Ok(SENDER_FP))
        .unwrap();
    pump(&mut s, &mut r, &mut seen);
    (s, r, seen)
}

#[test]
fn both_sides_switch_plain_and_encrypted() {
    for enc in [false, true] {
        let (mut s, mut r, seen) = exchange(enc);
        assert_eq!(
            actions(&mut s),
            [Action::Switch {
                addr: a("203.0.113.9:41000")
            }]
        );
        assert_eq!(
            actions(&mut r),
            [Action::Switch {
                addr: a("203.0.113.5:40000")
            }]
        );
        let names: Vec<_> = seen.iter().map(|c| c.type_name()).collect();
        let cands = if enc { "enc_candidates" } else { "candidates" };
        assert_eq!(names, [cands, cands, "direct_ready", "direct_ready"]);
    }
}

#[test]
fn encrypted_candidates_hide_addresses_and_fingerprints_from_the_relay() {
    let (_, _, seen) = exchange(true);
    for m in &seen {
        let text = m.to_json();
        for secret in [
            "203.0.113",
            "10.0.0.7",
            "192.168",
            &"aa".repeat(32),
            &"bb".repeat(32),
        ] {
            assert!(!text.contains(secret), "{text} shows {secret}");
        }
    }
    let Control::EncCandidates {
        attempt,
        hidden_candidates,
    } = &seen[0]
    else {
        panic!("{:?}", seen[0])
    };
    assert_eq!(*attempt, 1);
    assert!(crate::wire::unhex(hidden_candidates).is_some());
}

/// The nonce as docs/PROTOCOL.md section 14 gives it, computed here from the text.
fn documented_nonce(label: &str, attempt: u32, seed: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut input = label.as_bytes().to_vec();
    input.extend_from_slice(&attempt.to_be_bytes());
    input.extend_from_slice(seed);
    Sha256::digest(&input).into()
}

#[test]
fn sealed_lists_use_the_documented_nonces_and_hold_the_plain_list() {
    let t = Instant::now();
    for (role, label, fp) in [
        (Role::Sender, "p2p-copy candidates from the sender", "aa"),
        (
            Role::Receiver,
            "p2p-copy candidates from the receiver",
            "bb",
        ),
    ] {
        let mut d = machine(t, role, config(), true);
        let Some(Control::EncCandidates {
            attempt: 1,
            hidden_candidates,
        }) = d.poll_transmit()
        else {
            panic!("no enc_candidates")
        };
        let (cipher, seed) = sealing().unwrap();
        let plain = cipher
            .open(
                &documented_nonce(label, 1, &seed),
                &crate::wire::unhex(&hidden_candidates).unwrap(),
            )
            .expect("opens under the documented nonce");
        let text = String::from_utf8(plain).unwrap();
        assert!(
            text.starts_with(&format!(
                r#"{{"type":"candidates","attempt":1,"fingerprint":"{}","candidates":[{{"addr":""#,
                fp.repeat(32)
            )),
            "{text}"
        );
        let plain_machine = machine(t, role, config(), false).poll_transmit().unwrap();
        assert_eq!(text, plain_machine.to_json());
    }
}

#[test]
fn sealed_candidates_open_only_as_the_peers_under_the_sessions_key() {
    let t = Instant::now();
    let sender_msg = machine(t, Role::Sender, config(), true)
        .poll_transmit()
        .unwrap();
    // Reflected back at the sender it does not open: the nonce names the role.
    let mut s = machine(t, Role::Sender, config(), true);
    let e = s.handle_message(t, sender_msg.clone()).unwrap_err();
    assert_eq!(kind_of(e), "integrity");
    assert_eq!(s.poll_action(), None);
    // Another session's seed does not open it either.
    let mut r = DirectPath::new(
        t,
        config(),
        Role::Receiver,
        RECEIVER_FP,
        &[],
        Some((Cipher::new(&[3; 32]), [8; 32])),
    )
    .unwrap();
    assert_eq!(
        kind_of(r.handle_message(t, sender_msg.clone()).unwrap_err()),
        "integrity"
    );
    // Nor does a flipped bit, and the error is sticky.
    let Control::EncCandidates {
        hidden_candidates, ..
    } = sender_msg
    else {
        unreachable!()
    };
    let mut bytes = crate::wire::unhex(&hidden_candidates).unwrap();
    bytes[3] ^= 1;
    let mut r = machine(t, Role::Receiver, config(), true);
    let tampered = Control::EncCandidates {
        attempt: 1,
        hidden_candidates: crate::wire::hex(&bytes),
    };
    assert_eq!(
        kind_of(r.handle_message(t, tampered).unwrap_err()),
        "integrity"
    );
    assert_eq!(r.poll_action(), None);
    assert_eq!(kind_of(r.handle_timeout(t).unwrap_err()), "integrity");
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn plain_candidates_are_refused_when_encrypting_and_sealed_ones_when_not() {
    let t = Instant::now();
    let mut r = machine(t, Role::Receiver, config(), true);
    let e = r
        .handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    assert_eq!(r.poll_action(), None);

    let sealed = machine(t, Role::Sender, config(), true)
        .poll_transmit()
        .unwrap();
    let mut r = machine(t, Role::Receiver, config(), false);
    assert_eq!(kind_of(r.handle_message(t, sealed).unwrap_err()), "peer");
    assert_eq!(r.poll_action(), None);
}

#[test]
fn more_than_sixteen_candidates_are_a_protocol_violation() {
    let t = Instant::now();
    let addrs: Vec<String> = (0..=MAX_CANDIDATES)
        .map(|i| format!("10.0.1.{i}:5000"))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();

    let mut r = machine(t, Role::Receiver, config(), false);
    let e = r.handle_message(t, list(SENDER_FP, &refs)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "protocol violation: 17 candidates, more than the 16 allowed"
    );
    assert_eq!(r.poll_action(), None);

    let mut r = machine(t, Role::Receiver, config(), false);
    r.handle_message(t, list(SENDER_FP, &refs[..MAX_CANDIDATES]))
        .unwrap();
    assert_eq!(actions(&mut r).len(), MAX_CANDIDATES);
}

#[test]
fn unusable_addresses_are_ignored_and_never_probed() {
    let t = Instant::now();
    let mut r = machine(t, Role::Receiver, config(), false);
    json(&mut r);
    let bad = [
        "192.168.1.10:0",
        "224.0.0.251:5353",
        "[ff02::1]:4000",
        "0.0.0.0:4000",
        "[::]:4000",
        "255.255.255.255:4000",
        "127.0.0.1:4000",
        "[::1]:4000",
        "[fe80::1]:4000",
        RELAY,
        "[::ffff:198.51.100.1]:9000",
    ];
    let mut all: Vec<&str> = bad.to_vec();
    all.extend([
        "192.168.1.10:40000",
        "[::ffff:192.168.1.10]:40000",
        "[2001:db8::5]:4000",
    ]);
    r.handle_message(t, list(SENDER_FP, &all)).unwrap();
    assert_eq!(
        actions(&mut r),
        [probe("192.168.1.10:40000"), probe("[2001:db8::5]:4000")]
    );
    let Some(DirectEvent::CandidatesReceived { usable, ignored }) = r.poll_event() else {
        panic!()
    };
    assert_eq!(usable, [a("192.168.1.10:40000"), a("[2001:db8::5]:4000")]);
    let why: Vec<&str> = ignored.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(
        why,
        [
            "port 0",
            "multicast address",
            "multicast address",
            "unspecified address",
            "unspecified address",
            "broadcast address",
            "loopback address",
            "loopback address",
            "link-local address",
            "the relay's own address",
            "the relay's own address",
            "listed twice",
        ]
    );
    // A result for an address that was never asked is refused.
    for addr in bad.iter().filter_map(|s| s.parse::<SocketAddr>().ok()) {
        let e = r.handle_probe_result(t, addr, Ok(SENDER_FP)).unwrap_err();
        assert_eq!(kind_of(e), "misuse");
    }
    assert_eq!(json(&mut r), Vec::<String>::new());
}

#[test]
fn loopback_candidates_are_probed_only_when_allowed() {
    let t = Instant::now();
    let cfg = DirectConfig {
        allow_loopback: true,
        ..config()
    };
    let mut r = machine(t, Role::Receiver, cfg, false);
    r.handle_message(t, list(SENDER_FP, &["127.0.0.1:4000", "[::1]:4001"]))
        .unwrap();
    assert_eq!(
        actions(&mut r),
        [probe("127.0.0.1:4000"), probe("[::1]:4001")]
    );
}

#[test]
fn malformed_candidate_lists_are_protocol_violations() {
    let t = Instant::now();
    let good_fp = crate::wire::hex(&SENDER_FP);
    let cases = [
        (
            format!(
                r#"{{"type":"candidates","attempt":1,"fingerprint":"{good_fp}","candidates":[{{"addr":"example.org:4000","kind":"host"}}]}}"#
            ),
            "protocol violation: candidate example.org:4000 is not an ip:port address",
        ),
        (
            format!(
                r#"{{"type":"candidates","attempt":1,"fingerprint":"{good_fp}","candidates":[{{"addr":"10.0.0.1","kind":"host"}}]}}"#
            ),
            "protocol violation: candidate 10.0.0.1 is not an ip:port address",
        ),
        (
            r#"{"type":"candidates","attempt":1,"fingerprint":"abcd","candidates":[]}"#.to_owned(),
            "protocol violation: the candidates' fingerprint is not 32 bytes of hex",
        ),
        (
            format!(
                r#"{{"type":"candidates","attempt":2,"fingerprint":"{good_fp}","candidates":[]}}"#
            ),
            "protocol violation: direct-path attempt 2, expected 1",
        ),
        (
            format!(
                r#"{{"type":"candidates","attempt":1,"fingerprint":"{good_fp}","candidates":[{{"addr":"{}:1","kind":"host"}}]}}"#,
                "1".repeat(70)
            ),
            "protocol violation: a candidate address is too long",
        ),
    ];
    for (text, expected) in cases {
        let mut r = machine(t, Role::Receiver, config(), false);
        let e = r
            .handle_message(t, Control::parse(&text).unwrap())
            .unwrap_err();
        assert_eq!(e.to_string(), expected, "{text}");
        assert_eq!(r.poll_action(), None);
    }
    assert!(Control::parse(
        r#"{"type":"candidates","attempt":1,"fingerprint":"00","candidates":[{"addr":"1.2.3.4:5","kind":"relay"}]}"#
    )
    .is_err());
}

#[test]
fn a_second_candidate_list_is_refused_before_and_after_the_switch() {
    let t = Instant::now();
    let mut r = machine(t, Role::Receiver, config(), false);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    let e = r
        .handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "protocol violation: the peer sent its candidates a second time"
    );

    let (mut s, _, _) = exchange(false);
    assert_eq!(s.switched_to(), Some(a("203.0.113.9:41000")));
    actions(&mut s);
    let e = s
        .handle_message(t, list(RECEIVER_FP, &["203.0.113.66:41000"]))
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    assert_eq!(s.poll_action(), None);
}

#[test]
fn a_probe_with_another_certificate_is_never_switched_to() {
    let t = Instant::now();
    let mut s = machine(t, Role::Sender, config(), false);
    json(&mut s);
    s.handle_message(t, list(RECEIVER_FP, &["10.0.0.7:41000"]))
        .unwrap();
    actions(&mut s);
    events(&mut s);
    s.handle_probe_result(t, a("10.0.0.7:41000"), Ok([0xcc; 32]))
        .unwrap();
    assert_eq!(
        events(&mut s),
        [DirectEvent::ProbeRefused {
            addr: a("10.0.0.7:41000")
        }]
    );
    s.handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap();
    assert_eq!((json(&mut s), actions(&mut s)), (vec![], vec![]));
    // Reported again as the right one: still refused, the first word stands.
    assert_eq!(
        kind_of(
            s.handle_probe_result(t, a("10.0.0.7:41000"), Ok(RECEIVER_FP))
                .unwrap_err()
        ),
        "misuse"
    );
    s.handle_timeout(t + Duration::from_secs(5)).unwrap();
    assert_eq!(
        json(&mut s),
        [r#"{"type":"direct_failed","attempt":1,"why":"timeout"}"#]
    );
    assert_eq!(
        actions(&mut s),
        [Action::GiveUp {
            reason: "no direct path within 5.0 s".into(),
            fatal: false
        }]
    );
    assert_eq!(s.switched_to(), None);

    // The receiver likewise never declares itself ready on a mismatched certificate.
    let mut r = machine(t, Role::Receiver, config(), false);
    json(&mut r);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    r.handle_probe_result(t, a("192.168.1.10:40000"), Ok(RECEIVER_FP))
        .unwrap();
    assert_eq!(json(&mut r), Vec::<String>::new());
}

#[test]
fn the_attempt_gives_up_at_its_deadline_and_not_before() {
    for (mode, fatal) in [(DirectMode::Auto, false), (DirectMode::DirectOnly, true)] {
        for role in [Role::Sender, Role::Receiver] {
            let t = Instant::now();
            let cfg = DirectConfig {
                mode,
                attempt_timeout: Duration::from_millis(2500),
                ..config()
            };
            let mut d = machine(t, role, cfg, false);
            json(&mut d);
            assert_eq!(d.poll_timeout(), Some(t + Duration::from_millis(2500)));
            d.handle_timeout(t + Duration::from_millis(2499)).unwrap();
            assert_eq!((json(&mut d), actions(&mut d)), (vec![], vec![]));
            d.handle_timeout(t + Duration::from_millis(2500)).unwrap();
            assert_eq!(
                json(&mut d),
                [r#"{"type":"direct_failed","attempt":1,"why":"timeout"}"#]
            );
            assert_eq!(
                actions(&mut d),
                [Action::GiveUp {
                    reason: "no direct path within 2.5 s".into(),
                    fatal
                }]
            );
            assert_eq!(d.poll_timeout(), None);
            // Once: a later tick and the peer's own direct_failed change nothing.
            d.handle_timeout(t + Duration::from_secs(9)).unwrap();
            d.handle_message(
                t,
                Control::DirectFailed {
                    attempt: 1,
                    why: "timeout".into(),
                },
            )
            .unwrap();
            assert_eq!((json(&mut d), actions(&mut d)), (vec![], vec![]));
        }
    }
}

fn held(ms: u64) -> DirectConfig {
    DirectConfig {
        dial_hold: Duration::from_millis(ms),
        ..config()
    }
}

#[test]
fn the_sender_holds_its_probes_until_its_candidates_can_have_reached_the_receiver() {
    let t = Instant::now();
    let ms = Duration::from_millis;
    let mut s = machine(t, Role::Sender, held(40), false);
    json(&mut s);
    assert_eq!(s.poll_timeout(), Some(t + ms(5000)), "nothing held yet");
    // The receiver's list arrives 10 ms after ours went out: it has not punched yet.
    s.handle_message(
        t + ms(10),
        list(RECEIVER_FP, &["10.0.0.7:41000", "203.0.113.9:41000"]),
    )
    .unwrap();
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.poll_timeout(), Some(t + ms(40)));
    s.handle_timeout(t + ms(39)).unwrap();
    assert_eq!((json(&mut s), actions(&mut s)), (vec![], vec![]));
    s.handle_timeout(t + ms(40)).unwrap();
    assert_eq!(
        actions(&mut s),
        [probe("10.0.0.7:41000"), probe("203.0.113.9:41000")]
    );
    assert_eq!(s.poll_timeout(), Some(t + ms(5000)));
    // Then as without a hold: verified, the receiver ready, the switch.
    s.handle_probe_result(t + ms(41), a("203.0.113.9:41000"), Ok(RECEIVER_FP))
        .unwrap();
    s.handle_message(t + ms(42), Control::DirectReady { attempt: 1 })
        .unwrap();
    assert_eq!(
        actions(&mut s),
        [Action::Switch {
            addr: a("203.0.113.9:41000")
        }]
    );
}

#[test]
fn a_list_that_arrives_after_the_hold_is_probed_at_once() {
    let t = Instant::now();
    let mut s = machine(t, Role::Sender, held(40), false);
    s.handle_message(
        t + Duration::from_millis(40),
        list(RECEIVER_FP, &["10.0.0.7:41000"]),
    )
    .unwrap();
    assert_eq!(actions(&mut s), [probe("10.0.0.7:41000")]);
}

#[test]
fn the_receiver_punches_at_once_whatever_the_hold() {
    let t = Instant::now();
    let mut r = machine(t, Role::Receiver, held(40), false);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    assert_eq!(actions(&mut r), [probe("192.168.1.10:40000")]);
}

#[test]
fn held_probes_are_dropped_when_the_attempt_ends_first() {
    let t = Instant::now();
    let ms = Duration::from_millis;
    // The peer gives up during the hold.
    let mut s = machine(t, Role::Sender, held(40), false);
    s.handle_message(t, list(RECEIVER_FP, &["10.0.0.7:41000"]))
        .unwrap();
    s.handle_message(
        t + ms(5),
        Control::DirectFailed {
            attempt: 1,
            why: "timeout".into(),
        },
    )
    .unwrap();
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::GiveUp { .. }]
    ));
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t + ms(40)).unwrap();
    assert_eq!(actions(&mut s), []);
    // The deadline comes before the end of the hold.
    let cfg = DirectConfig {
        attempt_timeout: ms(30),
        ..held(40)
    };
    let mut s = machine(t, Role::Sender, cfg, false);
    json(&mut s);
    s.handle_message(t, list(RECEIVER_FP, &["10.0.0.7:41000"]))
        .unwrap();
    assert_eq!(s.poll_timeout(), Some(t + ms(30)));
    s.handle_timeout(t + ms(30)).unwrap();
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::GiveUp { .. }]
    ));
    s.handle_timeout(t + ms(40)).unwrap();
    assert_eq!(actions(&mut s), []);
}

#[test]
fn the_peers_direct_failed_ends_the_attempt_without_an_answer() {
    let t = Instant::now();
    for role in [Role::Sender, Role::Receiver] {
        let mut d = machine(t, role, config(), false);
        json(&mut d);
        d.handle_message(
            t,
            Control::DirectFailed {
                attempt: 1,
                why: "timeout\u{1b}[2J".into(),
            },
        )
        .unwrap();
        assert_eq!(json(&mut d), Vec::<String>::new());
        let acts = actions(&mut d);
        let [Action::GiveUp {
            reason,
            fatal: false,
        }] = acts.as_slice()
        else {
            panic!("{acts:?}")
        };
        assert!(
            reason.starts_with("the peer gave up the direct path (timeout"),
            "{reason}"
        );
        assert!(!reason.contains('\u{1b}'), "{reason}");
    }
    // A ready receiver follows the sender giving up.
    let mut r = machine(t, Role::Receiver, config(), false);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    r.handle_probe_result(t, a("192.168.1.10:40000"), Ok(SENDER_FP))
        .unwrap();
    actions(&mut r);
    r.handle_message(
        t,
        Control::DirectFailed {
            attempt: 1,
            why: "timeout".into(),
        },
    )
    .unwrap();
    assert!(matches!(
        actions(&mut r).as_slice(),
        [Action::GiveUp { .. }]
    ));
}

#[test]
fn out_of_order_verdicts_are_protocol_violations() {
    let t = Instant::now();
    // The sender's switch before the receiver declared itself ready.
    let mut r = machine(t, Role::Receiver, config(), false);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    let e = r
        .handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    // The sender's switch after its own direct_failed reached the ready receiver.
    let mut r = machine(t, Role::Receiver, config(), false);
    r.handle_message(t, list(SENDER_FP, &["192.168.1.10:40000"]))
        .unwrap();
    r.handle_probe_result(t, a("192.168.1.10:40000"), Ok(SENDER_FP))
        .unwrap();
    r.handle_message(
        t,
        Control::DirectFailed {
            attempt: 1,
            why: "timeout".into(),
        },
    )
    .unwrap();
    actions(&mut r);
    let e = r
        .handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "protocol violation: the sender switched to the direct path after it gave it up"
    );
    assert_eq!(r.poll_action(), None);
    // The receiver's ready before its candidates.
    let mut s = machine(t, Role::Sender, config(), false);
    let e = s
        .handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    // The receiver giving up after it declared itself ready.
    let mut s = machine(t, Role::Sender, config(), false);
    s.handle_message(t, list(RECEIVER_FP, &["10.0.0.7:41000"]))
        .unwrap();
    s.handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap();
    let e = s
        .handle_message(
            t,
            Control::DirectFailed {
                attempt: 1,
                why: String::new(),
            },
        )
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    // direct_failed after the switch.
    let (mut s, _, _) = exchange(false);
    let e = s
        .handle_message(
            t,
            Control::DirectFailed {
                attempt: 1,
                why: String::new(),
            },
        )
        .unwrap_err();
    assert_eq!(kind_of(e), "peer");
    // ready twice, and another attempt's ready.
    let mut s = machine(t, Role::Sender, config(), false);
    s.handle_message(t, list(RECEIVER_FP, &["10.0.0.7:41000"]))
        .unwrap();
    s.handle_message(t, Control::DirectReady { attempt: 1 })
        .unwrap();
    assert_eq!(
        kind_of(
            s.handle_message(t, Control::DirectReady { attempt: 1 })
                .unwrap_err()
        ),
        "peer"
    );
    let mut s = machine(t, Role::Sender, config(), false);
    assert_eq!(
        kind_of(
            s.handle_message(t, Control::DirectReady { attempt: 7 })
                .unwrap_err()
        ),
        "peer"
    );
}

#[test]
fn session_messages_are_misuse_and_change_nothing() {
    let t = Instant::now();
    let mut s = machine(t, Role::Sender, config(), false);
    assert_eq!(
        kind_of(s.handle_message(t, Control::Eof).unwrap_err()),
        "misuse"
    );
    assert!(s.error().is_none());
    assert_eq!(s.poll_transmit().map(|c| c.type_name()), Some("candidates"));
    assert!(direct::is_direct_message(&Control::DirectReady {
        attempt: 1
    }));
    assert!(!direct::is_direct_message(&Control::Eof));
}

#[test]
fn relay_only_never_offers_accepts_or_runs() {
    let relay_only = DirectConfig {
        mode: DirectMode::RelayOnly,
        ..config()
    };
    let offered = vec!["confirm".to_owned(), "direct".to_owned()];
    assert!(!direct::offers(&relay_only));
    assert!(!direct::accepts(&relay_only, &offered));
    assert!(direct::offers(&config()));
    assert!(direct::accepts(&config(), &offered));
    assert!(!direct::accepts(&config(), &offered[..1]));
    let e = DirectPath::new(
        Instant::now(),
        relay_only,
        Role::Sender,
        SENDER_FP,
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(kind_of(e), "config");
}

#[test]
fn local_candidates_are_filtered_deduplicated_and_capped() {
    let mut mine = vec![
        host("0.0.0.0:40000"),
        host("127.0.0.1:40000"),
        host("[fe80::1]:40000"),
        host("10.0.0.2:0"),
        host("10.0.0.2:40000"),
        srflx("[::ffff:10.0.0.2]:40000"),
    ];
    mine.extend((0..20).map(|i| host(&format!("172.16.0.{i}:40000"))));
    let mut d = DirectPath::new(
        Instant::now(),
        config(),
        Role::Sender,
        SENDER_FP,
        &mine,
        None,
    )
    .unwrap();
    let Some(Control::Candidates(list)) = d.poll_transmit() else {
        panic!()
    };
    assert_eq!(list.candidates.len(), MAX_CANDIDATES);
    assert_eq!(list.candidates[0].addr, "10.0.0.2:40000");
    assert_eq!(list.candidates[1].addr, "172.16.0.0:40000");
    assert_eq!(list.candidates[15].addr, "172.16.0.14:40000");
}

// ---- Properties over arbitrary message sequences -------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// A candidate list: addresses from a pool (some unusable), fingerprint right or not,
    /// sealed correctly, under the wrong role, or not at all.
    List {
        addrs: Vec<u8>,
        right_fp: bool,
        seal: u8,
        attempt: u32,
    },
    Ready(u32),
    Failed(u32),
    /// A probe result for the n-th address asked, or for a pool address.
    Result {
        asked: bool,
        n: u8,
        outcome: u8,
    },
    Tick(u16),
    Raw(String),
}

const POOL: [&str; 12] = [
    "10.0.0.1:4000",
    "10.0.0.2:4000",
    "203.0.113.5:5000",
    "[2001:db8::1]:4000",
    "127.0.0.1:4000",
    "224.0.0.1:4000",
    "10.0.0.1:0",
    RELAY,
    "255.255.255.255:1",
    "[fe80::2]:4000",
    "0.0.0.0:4000",
    "not an address",
];

fn list_step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(0u8..12, 0..6),
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop_oneof![1 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)],
        prop_oneof![9 => Just(1u32), 1 => any::<u32>()],
    )
        .prop_map(|(addrs, right_fp, seal, attempt)| Step::List {
            addrs,
            right_fp,
            seal,
            attempt,
        })
}

/// Steps weighted so that most runs get past the first violation: mostly attempt 1,
/// mostly sealed right, short lists, clock steps well below the deadline.
fn step() -> impl Strategy<Value = Step> {
    let attempt = || prop_oneof![9 => Just(1u32), 1 => any::<u32>()];
    prop_oneof![
        2 => list_step(),
        3 => attempt().prop_map(Step::Ready),
        1 => attempt().prop_map(Step::Failed),
        5 => (any::<bool>(), any::<u8>(), 0u8..3).prop_map(|(asked, n, outcome)| Step::Result {
            asked,
            n,
            outcome
        }),
        1 => (0u16..1500).prop_map(Step::Tick),
        1 => "[ -~]{0,80}".prop_map(Step::Raw),
    ]
}

fn build_list(
    role_from: Role,
    enc: bool,
    addrs: &[u8],
    right_fp: bool,
    seal: u8,
    attempt: u32,
) -> Control {
    let fp = match (role_from, right_fp) {
        (Role::Sender, true) => SENDER_FP,
        (Role::Receiver, true) => RECEIVER_FP,
        _ => [0xcc; 32],
    };
    let names: Vec<&str> = addrs.iter().map(|&i| POOL[usize::from(i)]).collect();
    let Control::Candidates(mut l) = list(fp, &names) else {
        unreachable!()
    };
    l.attempt = attempt;
    if !enc || seal == 0 {
        return Control::Candidates(l);
    }
    // Sealed under the nonce of the right (seal 1) or the wrong (seal 2) role.
    let from = if seal == 1 {
        role_from
    } else {
        role_from.other()
    };
    let (cipher, seed) = sealing().unwrap();
    let nonce = direct::candidates_nonce(&seed, from, attempt);
    Control::EncCandidates {
        attempt,
        hidden_candidates: crate::wire::hex(
            &cipher.seal(&nonce, Control::Candidates(l).to_json().as_bytes()),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Whatever the peer sends and the runtime reports, the machine does not panic,
    /// probes only addresses of the one authentic list it accepted, switches only to a
    /// path verified with the exchanged fingerprint, decides at most once, and keeps its
    /// first error.
    #[test]
    fn arbitrary_sequences_keep_the_rules(
        receiver in any::<bool>(),
        enc in any::<bool>(),
        hold in prop_oneof![Just(0u64), Just(700u64)],
        first in list_step(),
        rest in prop::collection::vec(step(), 0..40),
    ) {
        let role = if receiver { Role::Receiver } else { Role::Sender };
        let t0 = Instant::now();
        let mut now = t0;
        let mut d = machine(t0, role, held(hold), enc);
        // When this side may probe: the sender after its hold, the receiver at once.
        let dial_at = match role {
            Role::Sender => t0 + Duration::from_millis(hold),
            Role::Receiver => t0,
        };
        let peer_fp = if receiver { SENDER_FP } else { RECEIVER_FP };
        let mut authentic: Option<(HashSet<SocketAddr>, [u8; 32])> = None;
        let mut asked: Vec<SocketAddr> = Vec::new();
        let mut verified: HashSet<SocketAddr> = HashSet::new();
        let mut decisions = 0;
        let mut first_error: Option<crate::Error> = None;
        for st in std::iter::once(first).chain(rest) {
            let before_error = d.error().cloned();
            let r = match &st {
                Step::List { addrs, right_fp, seal, attempt } => {
                    let m = build_list(role.other(), enc, addrs, *right_fp, *seal, *attempt);
                    let accepted_form = *attempt == 1 && (if enc { *seal == 1 } else { true });
                    let r = d.handle_message(now, m);
                    if r.is_ok() {
                        prop_assert!(accepted_form, "a list in the wrong form was accepted");
                        prop_assert!(authentic.is_none(), "a second list was accepted");
                        // Only the first four pool addresses are usable.
                        let usable = addrs.iter().filter(|&&i| i < 4).map(|&i| a(POOL[usize::from(i)])).collect();
                        authentic = Some((usable, if *right_fp { peer_fp } else { [0xcc; 32] }));
                    }
                    r
                }
                Step::Ready(n) => d.handle_message(now, Control::DirectReady { attempt: *n }),
                Step::Failed(n) => d.handle_message(now, Control::DirectFailed { attempt: *n, why: "x".into() }),
                Step::Result { asked: use_asked, n, outcome } => {
                    let addr = if *use_asked && !asked.is_empty() {
                        asked[usize::from(*n) % asked.len()]
                    } else {
                        match POOL[usize::from(*n) % POOL.len()].parse() { Ok(a) => a, Err(_) => continue }
                    };
                    let res = match outcome { 0 => Ok(peer_fp), 1 => Ok([0xcc; 32]), _ => Err("no".to_owned()) };
                    let was_asked = asked.contains(&addr);
                    let r = d.handle_probe_result(now, addr, res.clone());
                    if r.is_ok() {
                        prop_assert!(was_asked, "a result for an unasked address was taken");
                        if authentic.as_ref().is_some_and(|(_, fp)| res == Ok(*fp)) {
                            verified.insert(addr);
                        }
                    }
                    r
                }
                Step::Tick(ms) => { now += Duration::from_millis(u64::from(*ms)); d.handle_timeout(now) }
                Step::Raw(text) => match Control::parse(text) { Ok(c) => d.handle_message(now, c), Err(_) => continue },
            };
            if let Some(e) = before_error {
                prop_assert_eq!(r.as_ref().err(), Some(&e), "errors are sticky");
            }
            if let Err(e) = &r {
                if e.kind() != "misuse" && first_error.is_none() {
                    first_error = Some(e.clone());
                }
            }
            if r.as_ref().is_err_and(|e| e.kind() != "misuse") {
                prop_assert_eq!(d.poll_action(), None, "an action after a violation");
                prop_assert!(d.poll_transmit().is_none(), "a message after a violation");
            }
            while let Some(act) = d.poll_action() {
                match act {
                    Action::Probe { addr } => {
                        prop_assert!(now >= dial_at, "a probe during the sender's hold");
                        let (usable, _) = authentic.as_ref().expect("a probe before any authentic list");
                        prop_assert!(usable.contains(&addr), "probe of {} that the peer did not send", addr);
                        prop_assert!(!asked.contains(&addr), "{} probed twice", addr);
                        asked.push(addr);
                    }
                    Action::Switch { addr } => {
                        prop_assert!(verified.contains(&addr), "switch to unverified {}", addr);
                        decisions += 1;
                    }
                    Action::GiveUp { fatal, .. } => {
                        prop_assert!(!fatal);
                        decisions += 1;
                    }
                }
            }
            prop_assert!(decisions <= 1, "decided twice");
            // Nothing held past the hold: once a list was taken and the clock (a tick,
            // or the list itself) is past the hold, every usable candidate was asked.
            let clocked = matches!(st, Step::Tick(_) | Step::List { .. });
            if clocked && now >= dial_at && decisions == 0 && d.error().is_none() {
                if let Some((usable, _)) = &authentic {
                    prop_assert!(
                        usable.iter().all(|u| asked.contains(u)),
                        "candidates still held after the hold"
                    );
                }
            }
            while d.poll_transmit().is_some() {}
            while d.poll_event().is_some() {}
        }
        if let Some(e) = first_error {
            prop_assert_eq!(d.error(), Some(&e));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// The handover fuzz target on arbitrary scripts: no panic, every message once and
    /// in order.
    #[test]
    fn handover_scripts_deliver_every_message_once(data in prop::collection::vec(any::<u8>(), 0..400)) {
        crate::fuzz::handover(&data);
    }
}
