//! A relay in the middle of a code like `7-guitar-rocket`: it sees the room, not the
//! words, and when it replaces the PAKE messages with its own (a guess of the words on
//! each side) both sides abort with "wrong code" before any metadata moves, and it
//! learns nothing: no manifest, no name, no candidate. Our sender and receiver run as
//! the library on smol; the relay is scripted.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use p2p_copy_core::code::{room_id, PakeCode};
use p2p_copy_core::pake::{Pake, PakeConfig};
use p2p_copy_core::wire::Role;
use p2p_copy_core::{Error, WireMessage};
use p2p_copy_smol::{ClientConfig, DirectMode, SendOptions, TransferError};
use p2p_copy_tests::hostile_peer::{HostilePeer, Received, StandInRelay};
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{write_tree, FileSpec};

const CODE: &str = "7-guitar-rocket";
const STEP: Duration = Duration::from_secs(10);

fn config(url: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(url, CODE);
    cfg.pake = true;
    cfg.pair_timeout = Duration::from_secs(20);
    cfg.direct.mode = DirectMode::RelayOnly;
    cfg
}

async fn text(peer: &mut HostilePeer) -> String {
    match peer.recv(STEP).await {
        Received::Message(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

fn drained(p: &mut Pake) -> Vec<String> {
    std::iter::from_fn(|| p.poll_transmit())
        .map(|m| match m {
            WireMessage::Text(t) => t,
            WireMessage::Binary(_) => panic!("binary from the PAKE"),
        })
        .collect()
}

fn wrong_code(r: &Result<p2p_copy_smol::Summary, TransferError>) -> bool {
    matches!(r, Err(TransferError::Session(Error::WrongCode(_))))
}

#[test]
fn a_relay_that_replaces_the_pake_messages_learns_nothing_and_both_sides_abort() {
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("secret-name.txt", 1000, 1)]);
    let (sent, received, seen) = smol::block_on(async {
        let relay = StandInRelay::bind().await;
        let url = relay.url();
        let sender = smol::spawn(p2p_copy_smol::send(
            config(&url),
            vec![s.src.clone()],
            SendOptions::default(),
            |_| {},
        ));
        let (mut to_sender, sender_hello) = relay.accept(STEP).await;
        let receiver = smol::spawn(p2p_copy_smol::receive(config(&url), s.out.clone(), |_| {}));
        let (mut to_receiver, receiver_hello) = relay.accept(STEP).await;
        let mut seen = vec![sender_hello.clone(), receiver_hello.clone()];
        // The relay learns the room and the roles, never the words.
        let room = room_id(7);
        assert_eq!(
            sender_hello,
            format!(r#"{{"type":"hello","code_hash_hex":"{room}","role":"sender"}}"#)
        );
        assert!(receiver_hello.contains(&room) && receiver_hello.contains("receiver"));

        // Its own halves, with a guess of the words.
        let guess = PakeCode::parse("7-acid-zoom").unwrap();
        let now = Instant::now();
        let mut as_receiver =
            Pake::new(now, Role::Receiver, &guess, [1; 32], PakeConfig::default());
        let mut as_sender = Pake::new(now, Role::Sender, &guess, [2; 32], PakeConfig::default());
        drained(&mut as_receiver);
        drained(&mut as_sender);
        as_sender
            .handle_message(now, WireMessage::Text(r#"{"type":"ready"}"#.into()))
            .unwrap();
        let fake_a = drained(&mut as_sender).remove(0);

        to_sender.send_text(r#"{"type":"ready"}"#).await;
        let real_a = text(&mut to_sender).await;
        seen.push(real_a.clone());
        as_receiver
            .handle_message(now, WireMessage::Text(real_a))
            .unwrap();
        // The sender gets the relay's B and confirmation instead of the receiver's.
        for m in drained(&mut as_receiver) {
            to_sender.send_text(m).await;
        }
        // The receiver gets the relay's A instead of the sender's.
        to_receiver.send_text(fake_a).await;
        let real_b = text(&mut to_receiver).await;
        seen.push(real_b.clone());
        let guessed = as_sender.handle_message(now, WireMessage::Text(real_b));
        assert!(matches!(guessed, Err(Error::WrongCode(_))), "{guessed:?}");
        assert!(as_sender.keys().is_none() && as_receiver.keys().is_none());

        // Whatever the sender says next is passed on, as a relay would.
        let (after, _) = to_sender.collect(STEP).await;
        for m in &after {
            if let Message::Text(t) = m {
                seen.push(t.as_str().to_owned());
                to_receiver.send_text(t.as_str()).await;
            }
        }
        let (after, _) = to_receiver.collect(STEP).await;
        for m in &after {
            match m {
                Message::Text(t) => seen.push(t.as_str().to_owned()),
                other => seen.push(format!("{other:?}")),
            }
        }
        (sender.await, receiver.await, seen)
    });
    assert!(wrong_code(&sent), "sender: {sent:?}");
    assert!(wrong_code(&received), "receiver: {received:?}");
    // All the relay saw: two hellos, the two PAKE messages and the sender's verdict.
    let kinds: Vec<String> = seen
        .iter()
        .map(|t| {
            serde_json::from_str::<serde_json::Value>(t)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_else(|| t.clone())
        })
        .collect();
    assert_eq!(
        kinds,
        ["hello", "hello", "pake", "pake", "pake_failed"],
        "{seen:?}"
    );
    let all = seen.join("\n");
    for secret in ["guitar", "rocket", "secret-name", "manifest", "candidates"] {
        assert!(!all.contains(secret), "the relay saw {secret:?}: {all}");
    }
    assert_eq!(std::fs::read_dir(&s.out).map(|d| d.count()).unwrap_or(0), 0);
}
