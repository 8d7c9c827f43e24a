//! Automatic reconnect against strangers: while the two sides of a transfer are away
//! from a restarted relay, a client that knows the code's hash (as the relay does) but
//! not the code joins the room. It gets no file data and no resume answer, and the
//! transfer still finishes once the real receiver is back. Real processes of our CLI on
//! 127.0.0.1, the stranger scripted.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use p2p_copy_core::code::PakeCode;
use p2p_copy_core::crypto::code_hash;
use p2p_copy_core::pake::{Pake, PakeConfig};
use p2p_copy_core::wire::{Control, Role, EXT_CONFIRM, EXT_RECONNECT};
use p2p_copy_core::WireMessage;
use p2p_copy_tests::binary::cli_binary;
use p2p_copy_tests::deadline::wait_for;
use p2p_copy_tests::hostile_peer::{HostilePeer, Received};
use p2p_copy_tests::process::{start_cli_relay_on, ChildGuard};
use p2p_copy_tests::python;
use p2p_copy_tests::scene::Scene;
use p2p_copy_tests::tree::{assert_same_tree, partial_path, random_bytes, MIB};

const LIMIT: Duration = Duration::from_secs(60);
const RELAY: &[&str] = &[
    "--no-tls",
    "--max-rate",
    "1Mi",
    "--stun-port",
    "0",
    "--drain-timeout",
    "0",
];

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A transfer of `big.bin` whose relay was restarted once the receiver held a piece:
/// the relay now running, and the two sides reconnecting (the receiver late, 2 to 4 s
/// after the loss, the sender at once, so a stranger that joins now is there first).
struct Restarted {
    _relay: ChildGuard,
    url: String,
    sender: ChildGuard,
    receiver: ChildGuard,
}

/// Start a transfer of `size` bytes with the arguments `receive` and `send` give for the
/// relay URL, and restart its relay mid-transfer.
fn restarted(
    s: &Scene,
    size: u64,
    receive: impl Fn(&str) -> Vec<String>,
    send: impl Fn(&str) -> Vec<String>,
) -> Restarted {
    let bin = cli_binary();
    fs::write(s.src.join("big.bin"), random_bytes(size, size % 97)).unwrap();
    let (mut relay, url) = start_cli_relay_on(&bin, 0, RELAY);
    let receiver = ChildGuard::spawn(
        Command::new(&bin)
            .args(receive(&url))
            .args(["--out", s.out.to_str().unwrap()])
            .args(["--relay-only", "--retry-backoff", "4s"]),
    );
    let sender = ChildGuard::spawn(
        Command::new(&bin)
            .args(send(&url))
            .arg(s.src.join("big.bin"))
            .args(["--relay-only", "--retry-backoff", "200ms"]),
    );
    let partial = partial_path(&s.out, "big.bin");
    wait_for(Duration::from_secs(30), "the partial file grows", || {
        let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (len >= MIB).then_some(())
    });
    relay.kill();
    let (again_relay, again) = start_cli_relay_on(&bin, port_of(&url), RELAY);
    assert_eq!(again, url);
    Restarted {
        _relay: again_relay,
        url,
        sender,
        receiver,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[test]
fn a_stranger_in_the_room_during_the_gap_gets_nothing_and_the_transfer_finishes() {
    let s = Scene::new();
    let code = "reconnect stranger";
    let Restarted {
        _relay: _running,
        url,
        sender,
        receiver,
    } = restarted(
        &s,
        4 * MIB + 77,
        |url| strings(&["receive", url, code]),
        |url| strings(&["send", url, code]),
    );

    let hash = code_hash(code, false).unwrap();
    let (manifest, rest) = smol::block_on(async {
        let mut stranger = HostilePeer::join(&url, &hash, Role::Receiver).await;
        let manifest = match stranger.recv(Duration::from_secs(10)).await {
            Received::Message(Message::Text(t)) => t.as_str().to_owned(),
            other => panic!("the reconnecting sender's manifest, not {other:?}"),
        };
        // It accepts everything and answers with a proof it cannot compute.
        let accept = vec![EXT_CONFIRM.to_owned(), EXT_RECONNECT.to_owned()];
        stranger.send_control(&Control::Extensions { accept }).await;
        let proof = "00".repeat(32);
        stranger
            .send_control(&Control::ReconnectProof { proof })
            .await;
        let answer = Control::ReceiverManifest {
            entries: Vec::new(),
        };
        stranger.send_control(&answer).await;
        let (rest, _) = stranger.collect(Duration::from_secs(10)).await;
        (manifest, rest)
    });
    assert!(
        manifest.contains("\"attempt\":") && manifest.contains("\"proof\":"),
        "the sender proves itself on a reconnect: {manifest}"
    );
    assert!(
        !manifest.contains("\"secret\""),
        "the ticket's secret travels only in the first session: {manifest}"
    );
    for m in &rest {
        match m {
            Message::Binary(_) => panic!("the stranger got file data"),
            Message::Text(t) => assert!(
                !t.as_str().contains("\"type\":\"file\""),
                "the stranger got a file header: {t}"
            ),
            _ => {}
        }
    }

    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out);
    assert!(
        sent.stderr
            .contains("could not prove it is the one that began the transfer"),
        "the sender says why it refused the stranger: {}",
        sent.stderr
    );
}

/// A code like `7-guitar-rocket`: the room's number is public, so a stranger can wait in
/// it while the two sides are away. The reconnecting sender runs a fresh PAKE with it,
/// which fails (the stranger does not hold the words): the stranger gets the sender's
/// SPAKE2 message and its verdict, nothing else, and the attempt counts as one retry.
/// The transfer then finishes with the real receiver.
#[test]
fn a_stranger_in_a_generated_codes_room_during_the_gap_fails_the_pake_and_gets_nothing() {
    let s = Scene::new();
    let code = "7-guitar-rocket";
    let Restarted {
        _relay: _running,
        url,
        sender,
        receiver,
    } = restarted(
        &s,
        4 * MIB + 78,
        |url| strings(&["receive", code, "--relay", url]),
        |url| strings(&["send", "--relay", url, "--code", code]),
    );

    let guess = PakeCode::parse("7-acid-zoom").unwrap();
    let seen = smol::block_on(async {
        let mut stranger = join_room(&url, &guess.room_id()).await;
        let mut pake = Pake::new(
            Instant::now(),
            Role::Receiver,
            &guess,
            [5; 32],
            PakeConfig::default(),
        );
        // Its hello went with the join.
        let _ = std::iter::from_fn(|| pake.poll_transmit()).count();
        let mut seen = Vec::new();
        loop {
            let Received::Message(m) = stranger.recv(Duration::from_secs(10)).await else {
                break;
            };
            seen.push(m.clone());
            let Message::Text(t) = m else { break };
            if pake
                .handle_message(Instant::now(), WireMessage::Text(t.as_str().to_owned()))
                .is_err()
            {
                break;
            }
            for reply in std::iter::from_fn(|| pake.poll_transmit()) {
                if let WireMessage::Text(t) = reply {
                    stranger.send_text(t).await;
                }
            }
        }
        let (rest, _) = stranger.collect(Duration::from_secs(10)).await;
        seen.extend(rest);
        seen
    });
    let kinds: Vec<String> = seen
        .iter()
        .map(|m| match m {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str())
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_else(|| t.as_str().to_owned()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["pake", "pake_failed"],
        "the stranger gets the sender's SPAKE2 message and its verdict, nothing else"
    );

    let sent = sender.wait(LIMIT);
    let received = receiver.wait(LIMIT);
    assert_eq!(sent.code(), 0, "sender: {sent:?}");
    assert_eq!(received.code(), 0, "receiver: {received:?}");
    assert_same_tree(&s.src, &s.out);
    assert!(
        sent.stderr.contains("wrong code"),
        "the sender says why the attempt failed: {}",
        sent.stderr
    );
}

/// Join the relay in the room `room` (its id) as a receiver, as a stranger who read the
/// number.
async fn join_room(url: &str, room: &str) -> HostilePeer {
    let mut peer = HostilePeer::connect(url)
        .await
        .expect("connect to the relay");
    let hello = Control::Hello {
        code_hash_hex: room.to_owned(),
        role: Role::Receiver,
    };
    peer.send_control(&hello).await;
    peer
}

/// With a p2p-copy 0.1.2 peer nothing is negotiated: a relay that dies mid-transfer ends
/// the transfer at once on our side (no reconnect, exit 7), and the message says that
/// the peer cannot reconnect and how to continue. Both roles.
#[test]
fn with_a_python_peer_a_lost_relay_ends_the_transfer_and_says_to_rerun_with_resume() {
    let bin = cli_binary();
    for ours in [Role::Sender, Role::Receiver] {
        let s = Scene::new();
        let code = format!("reconnect python {ours:?}");
        // Big enough that our sender is still writing when the relay dies: without
        // `confirm` (a 0.1.2 receiver) it is done once the last piece left.
        fs::write(s.src.join("big.bin"), random_bytes(32 * MIB + 5, 16)).unwrap();
        let (mut relay, url) = start_cli_relay_on(&bin, 0, RELAY);
        let out = s.out.to_str().unwrap();
        let (our_side, python_side) = match ours {
            Role::Sender => {
                let mut py = python::command(["receive", &url, &code, "--out", out]);
                let py = ChildGuard::spawn(&mut py);
                let mut cmd = Command::new(&bin);
                cmd.args(["send", &url, &code, "big.bin", "--relay-only"])
                    .current_dir(&s.src);
                (ChildGuard::spawn(&mut cmd), py)
            }
            Role::Receiver => {
                let mut cmd = Command::new(&bin);
                cmd.args(["receive", &url, &code, "--out", out, "--relay-only"]);
                let ours = ChildGuard::spawn(&mut cmd);
                let mut py = python::command(["send", &url, &code, "big.bin"]);
                py.current_dir(&s.src);
                (ours, ChildGuard::spawn(&mut py))
            }
        };
        // The Python receiver writes under the final name, ours under the partial one.
        let written = [s.out.join("big.bin"), partial_path(&s.out, "big.bin")];
        wait_for(Duration::from_secs(30), "the received file grows", || {
            let len = |p: &std::path::PathBuf| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            (written.iter().map(len).max().unwrap_or(0) >= MIB).then_some(())
        });
        relay.kill();
        let ended = our_side.wait(Duration::from_secs(20));
        let _ = python::wait_until(python_side, std::time::Instant::now() + LIMIT);
        assert_eq!(ended.code(), 7, "{ours:?}: {ended:?}");
        for says in [
            "connection lost",
            "did not agree to reconnect by itself (p2p-copy 0.1.x cannot)",
            "--resume",
        ] {
            assert!(
                ended.stderr.contains(says),
                "{ours:?} lacks {says:?}: {}",
                ended.stderr
            );
        }
        assert!(
            !ended.stderr.contains("reconnecting"),
            "{ours:?} tried to reconnect: {}",
            ended.stderr
        );
    }
}
