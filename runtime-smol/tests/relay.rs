//! The relay over real sockets, with bare WebSocket clients playing sender and receiver.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use p2p_copy_smol::{RelayServer, RelayServerConfig};

type Client = async_tungstenite::WebSocketStream<smol::net::TcpStream>;

async fn client(url: &str, role: &str) -> Client {
    let addr = url.trim_start_matches("ws://");
    let tcp = smol::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = async_tungstenite::client_async(url, tcp).await.unwrap();
    let hello = format!(
        r#"{{"type":"hello","code_hash_hex":"{}","role":"{role}"}}"#,
        "ab".repeat(32)
    );
    ws.send(Message::text(hello)).await.unwrap();
    ws
}

async fn relay() -> (String, smol::Task<std::io::Result<()>>) {
    let server = RelayServer::bind(RelayServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        tls: None,
        relay: Default::default(),
        stun: Default::default(),
        ops: Default::default(),
    })
    .await
    .unwrap();
    let url = format!("ws://{}", server.local_addr());
    (url, smol::spawn(server.run()))
}

#[test]
fn a_receiver_that_does_not_read_slows_its_sender() {
    smol::block_on(async {
        let (url, _relay) = relay().await;
        let mut sender = client(&url, "sender").await;
        let mut receiver = client(&url, "receiver").await;
        let ready = sender.next().await.unwrap().unwrap();
        assert_eq!(ready, Message::text(r#"{"type":"ready"}"#));
        // The receiver reads nothing; the sender pushes 1 MiB messages for 2 s. Without
        // backpressure the relay would buffer them all (gigabytes on loopback).
        let piece = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let mut sent = 0usize;
        let until = Instant::now() + Duration::from_secs(2);
        let pushing = async {
            loop {
                sender.send(Message::Binary(piece.clone())).await.unwrap();
                sent += 1;
            }
        };
        smol::future::or(pushing, async {
            smol::Timer::at(until).await;
        })
        .await;
        // Socket buffers on both hops hold some tens of MiB at most.
        assert!(
            sent < 100,
            "the sender pushed {sent} MiB past a receiver that reads nothing"
        );
        // And nothing was lost: the receiver gets every message in order once it reads.
        let reading = async {
            for _ in 0..sent {
                match receiver.next().await.unwrap().unwrap() {
                    Message::Binary(b) => assert_eq!(b.len(), 1 << 20),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        smol::future::or(reading, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            panic!("forwarded messages did not arrive");
        })
        .await;
    });
}

#[test]
fn a_connection_without_hello_is_closed() {
    smol::block_on(async {
        let server = RelayServer::bind(RelayServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            tls: None,
            relay: p2p_copy_smol::RelayConfig {
                hello_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            stun: Default::default(),
            ops: Default::default(),
        })
        .await
        .unwrap();
        let url = format!("ws://{}", server.local_addr());
        let _relay = smol::spawn(server.run());
        let tcp = smol::net::TcpStream::connect(url.trim_start_matches("ws://"))
            .await
            .unwrap();
        let (mut ws, _) = async_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        let started = Instant::now();
        let end = smol::future::or(async { ws.next().await }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            panic!("silent connection was never closed");
        })
        .await;
        match end {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
            other => panic!("expected a policy close, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}
