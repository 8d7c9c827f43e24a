//! A relay in the middle of a code like `7-guitar-rocket`: it sees the room, not the
//! words, and when it replaces the PAKE messages with its own (a guess of the words on
//! each side) both sides abort with "wrong code" before any metadata moves, and it
//! learns nothing: no manifest, no name, no candidate. Our sender and receiver run as
//! the library on smol; the relay is scripted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use p2p_copy_core::code::{room_id, PakeCode};
use p2p_copy_core::pake::{Pake, PakeConfig};
use p2p_copy_core::wire::Role;
use p2p_copy_core::{Error, WireMessage};
use p2p_copy_smol::{ClientConfig, DirectMode, SendOptions, TransferError};
use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::hostile_peer::{HostilePeer, Received, StandInRelay};
use p2p_copy_tests::process::start_cli_relay;
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

/// A TCP proxy in front of the relay that records what the relay sends each client:
/// WebSocket frames from a server are not masked, so every message the other side sent
/// through the relay appears in these bytes as the relay (and the network) saw it.
struct Tap {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn start(relay: std::net::SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
        let addr = listener.local_addr().expect("tap address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(relay) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                let record = Arc::clone(&record);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record.lock().unwrap().extend_from_slice(&buf[..n]);
                                if c_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Tap { addr, seen }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

#[test]
fn after_the_pake_the_direct_paths_candidates_travel_sealed_under_its_key() {
    let s = Scene::new();
    write_tree(&s.src, &[FileSpec::random("secret-name.bin", 200_000, 1)]);
    let (_relay, url) = start_cli_relay(&cli_binary(), &["--no-tls"]);
    let relay_addr = url
        .trim_start_matches("ws://")
        .parse()
        .expect("relay address");
    let tap = Tap::start(relay_addr);
    let url = format!("ws://{}", tap.addr);
    let direct = |url: &str| {
        let mut cfg = config(url);
        cfg.direct.mode = DirectMode::Auto;
        cfg.direct.allow_loopback = true;
        // Only host candidates: the tap passes no UDP to the relay's STUN port.
        cfg.direct.relay_stun = false;
        cfg
    };
    let (sent, received) = smol::block_on(async {
        let receiver = smol::spawn(p2p_copy_smol::receive(direct(&url), s.out.clone(), |_| {}));
        let sent = p2p_copy_smol::send(
            direct(&url),
            vec![s.src.clone()],
            SendOptions::default(),
            |_| {},
        )
        .await;
        (sent, receiver.await)
    });
    let summary = sent.expect("sent");
    received.expect("received");
    assert_eq!(
        std::fs::read(s.out.join("src/secret-name.bin")).unwrap(),
        std::fs::read(s.src.join("secret-name.bin")).unwrap()
    );
    assert!(
        matches!(summary.path, p2p_copy_smol::PathTaken::Direct { .. }),
        "{:?}",
        summary.path
    );
    let all = tap.seen();
    assert!(all.contains(r#""type":"pake","msg""#), "{all}");
    assert!(all.contains(r#""type":"enc_candidates""#), "{all}");
    assert!(all.contains(r#""type":"enc_manifest""#), "{all}");
    for plain in [
        r#""type":"candidates""#,
        r#""type":"manifest""#,
        "secret-name",
        "fingerprint",
        "127.0.0.1",
    ] {
        assert!(!all.contains(plain), "the relay saw {plain}: {all}");
    }
}
