//! The direct path on 127.0.0.1: whole sessions over QUIC between two endpoints that
//! know each other's certificate fingerprint, and peers that break the rules.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use futures_lite::future;
use p2p_copy_smol::quic::{self, Identity, QuicConn, QuicEndpoint};
use p2p_copy_smol::{
    ClientConfig, Incoming, MessageTransport, SendOptions, TransferError, TransportError,
};
use p2p_copy_tests::deadline::{sleep, within};
use p2p_copy_tests::tree::{assert_same_tree, standard_tree, write_tree, FileSpec};

const LIMIT: Duration = Duration::from_secs(60);

fn endpoint() -> (QuicEndpoint, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let endpoint = quic::endpoint(socket, Identity::generate().expect("a certificate"))
        .expect("a QUIC endpoint");
    let addr = endpoint.local_addr().expect("its address");
    (endpoint, addr)
}

/// A connection from `client` to `server`, each pinned to the other's fingerprint.
async fn pair(
    client: &QuicEndpoint,
    server: &QuicEndpoint,
    addr: SocketAddr,
) -> (QuicConn, QuicConn) {
    let (c, s) = future::zip(
        client.connect(addr, server.fingerprint()),
        server.accept(client.fingerprint()),
    )
    .await;
    (
        c.expect("the client connects"),
        s.expect("the server accepts"),
    )
}

/// Send `files` from a sender on one end of a direct connection to a receiver on the
/// other and check the tree arrives byte for byte.
fn whole_session(files: &[FileSpec], encrypt: bool, sender_connects: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("send");
    write_tree(&src.join("tree"), files);
    let out = tmp.path().join("out");
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    let mut cfg = ClientConfig::new("ws://unused.invalid", "direct code 42");
    cfg.encrypt = encrypt;
    future::block_on(within(LIMIT, "a session over QUIC", async {
        let (client, server) = pair(&a, &b, b_addr).await;
        let (for_sender, for_receiver) = match sender_connects {
            true => (client, server),
            false => (server, client),
        };
        let sending = p2p_copy_smol::send_direct(
            cfg.clone(),
            for_sender,
            vec![src.join("tree")],
            SendOptions::default(),
            |_| {},
        );
        let receiving =
            p2p_copy_smol::receive_direct(cfg.clone(), for_receiver, out.clone(), |_| {});
        let (sent, received) = future::zip(sending, receiving).await;
        let sent = sent.expect("the sender succeeds");
        let received = received.expect("the receiver succeeds");
        assert_eq!(sent.files, files.len());
        assert_eq!(received.bytes, sent.bytes);
    }));
    assert_same_tree(&src, &out);
}

#[test]
fn a_tree_crosses_a_direct_connection_byte_for_byte() {
    let mut files = standard_tree();
    // Several MiB, so the stream's flow-control windows open and close.
    files.push(FileSpec::random("big/seven.bin", 7 * 1024 * 1024 + 3, 99));
    whole_session(&files, false, true);
}

#[test]
fn an_encrypted_tree_crosses_a_direct_connection_byte_for_byte() {
    whole_session(&standard_tree(), true, false);
}

fn assert_refused(r: &Result<QuicConn, TransferError>, side: &str, mentions: &str) {
    match r {
        Err(TransferError::Direct(m)) => {
            assert!(
                m.contains(mentions),
                "{side}: {m:?} should mention {mentions:?}"
            )
        }
        Err(other) => panic!("{side}: wrong kind of error: {other:?}"),
        Ok(_) => panic!("{side}: a connection with the wrong certificate was made"),
    }
}

#[test]
fn a_server_with_another_certificate_is_refused_on_both_sides() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    let stranger = Identity::generate().unwrap();
    future::block_on(within(LIMIT, "a handshake with the wrong server", async {
        // The client was told of another certificate than the one the server has.
        let (c, s) = future::zip(
            a.connect(b_addr, stranger.fingerprint()),
            b.accept(a.fingerprint()),
        )
        .await;
        assert_refused(&c, "client", "is not the one it announced");
        assert_refused(&s, "server", "failed");
    }));
}

#[test]
fn a_client_with_another_certificate_is_refused_on_both_sides() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    let stranger = Identity::generate().unwrap();
    future::block_on(within(LIMIT, "a handshake with the wrong client", async {
        // The server waits for another certificate than the one the client has.
        let (c, s) = future::zip(
            a.connect(b_addr, b.fingerprint()),
            b.accept(stranger.fingerprint()),
        )
        .await;
        assert_refused(&s, "server", "is not the one it announced");
        assert_refused(&c, "client", "failed");
    }));
}

/// The process's peak virtual memory in KiB: an allocation of the claimed size would
/// raise it by that much even before its pages are touched.
fn vm_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmPeak:"))
        .expect("a VmPeak line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_frame_that_claims_three_gib_is_refused_without_allocating_it() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    future::block_on(within(LIMIT, "a 3 GiB claim", async {
        let (hostile, mut victim) = pair(&a, &b, b_addr).await;
        let (_connection, mut send, _recv) = hostile.into_parts();
        let before = vm_peak_kib();
        // A binary message of 3 GiB, of which a few bytes ever come; the stream stays
        // open, so a reader that trusts the length would wait for the rest.
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(3u32 << 30).to_be_bytes());
        frame.extend_from_slice(b"just a few bytes");
        send.write_all(&frame)
            .await
            .expect("the hostile peer writes");
        let got = future::poll_fn(|cx| victim.poll_recv(cx)).await;
        match got {
            Some(Err(TransportError::Violation { code, reason })) => {
                assert_eq!(code, 1009, "{reason}");
                assert!(reason.contains("3221225472"), "{reason}");
            }
            other => panic!("a 3 GiB claim was not refused: {other:?}"),
        }
        let grown = vm_peak_kib().saturating_sub(before);
        assert!(
            grown < 512 * 1024,
            "peak virtual memory grew by {grown} KiB"
        );
        // Nothing more is read after the violation.
        assert!(future::poll_fn(|cx| victim.poll_recv(cx)).await.is_none());
    }));
}

#[test]
fn a_session_refuses_an_oversized_frame_as_a_protocol_violation() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    let cfg = ClientConfig::new("ws://unused.invalid", "direct code 43");
    let out = tmp.path().join("out");
    future::block_on(within(LIMIT, "a receiver fed a 3 GiB claim", async {
        let (hostile, victim) = pair(&a, &b, b_addr).await;
        let (_connection, mut send, _recv) = hostile.into_parts();
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(3u32 << 30).to_be_bytes());
        send.write_all(&frame)
            .await
            .expect("the hostile peer writes");
        let err = p2p_copy_smol::receive_direct(cfg, victim, out, |_| {})
            .await
            .expect_err("the receiver refuses the message");
        assert_eq!(err.exit_code(), 4, "a protocol violation: {err}");
        assert!(err.to_string().contains("larger than the limit"), "{err}");
    }));
}

#[test]
fn a_peer_gets_one_stream_and_no_more() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    future::block_on(within(LIMIT, "a peer that opens many streams", async {
        let (mut hostile, mut victim) = pair(&a, &b, b_addr).await;
        let connection = hostile.connection().clone();
        // The victim grants one bidirectional stream (taken by the session) and no
        // unidirectional one: further streams never open, so the victim holds no state
        // for them.
        let more = async {
            let bi = future::or(async { connection.open_bi().await.is_ok() }, async {
                sleep(Duration::from_millis(500)).await;
                false
            });
            let uni = future::or(async { connection.open_uni().await.is_ok() }, async {
                sleep(Duration::from_millis(500)).await;
                false
            });
            let (bi, uni) = future::zip(bi, uni).await;
            assert!(!bi, "a second bidirectional stream was opened");
            assert!(!uni, "a unidirectional stream was opened");
        };
        more.await;
        // The session's own stream still carries messages both ways.
        let msg = p2p_copy_core::WireMessage::Text("one".into());
        send(&mut hostile, msg.clone()).await;
        let got = future::poll_fn(|cx| victim.poll_recv(cx)).await;
        assert_eq!(got, Some(Ok(Incoming::Message(msg.clone()))));
        send(&mut victim, msg.clone()).await;
        let got = future::poll_fn(|cx| hostile.poll_recv(cx)).await;
        assert_eq!(got, Some(Ok(Incoming::Message(msg))));
    }));
}

async fn send(t: &mut impl MessageTransport, msg: p2p_copy_core::WireMessage) {
    future::poll_fn(|cx| t.poll_ready(cx)).await.unwrap();
    t.start_send(msg).unwrap();
    future::poll_fn(|cx| t.poll_flush(cx)).await.unwrap();
}

#[test]
fn the_close_reaches_the_peer_with_its_code_and_reason() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    future::block_on(within(LIMIT, "a close over QUIC", async {
        let (mut client, mut server) = pair(&a, &b, b_addr).await;
        send(
            &mut client,
            p2p_copy_core::WireMessage::Binary(vec![5u8; 3000].into()),
        )
        .await;
        future::poll_fn(|cx| client.poll_ready(cx)).await.unwrap();
        client.start_close(1011, "io").unwrap();
        let closing = future::poll_fn(|cx| client.poll_flush(cx));
        let reading = async {
            let mut got = Vec::new();
            while let Some(item) = future::poll_fn(|cx| server.poll_recv(cx)).await {
                got.push(item.expect("no error"));
            }
            got
        };
        let (closed, got) = future::zip(closing, reading).await;
        closed.expect("the close is acknowledged");
        assert_eq!(
            got,
            vec![
                Incoming::Message(p2p_copy_core::WireMessage::Binary(vec![5u8; 3000].into())),
                Incoming::Close(Some((1011, "io".into()))),
            ]
        );
    }));
}

/// What a victim makes of `bytes` written raw on the session's stream, which then ends.
async fn verdict(
    a: &QuicEndpoint,
    b: &QuicEndpoint,
    b_addr: SocketAddr,
    bytes: &[u8],
) -> Option<Result<Incoming, TransportError>> {
    let (hostile, mut victim) = pair(a, b, b_addr).await;
    let (_connection, mut send, _recv) = hostile.into_parts();
    send.write_all(bytes)
        .await
        .expect("the hostile peer writes");
    send.finish().expect("the stream ends");
    future::poll_fn(|cx| victim.poll_recv(cx)).await
}

#[test]
fn malformed_frames_are_refused_and_a_cut_message_is_a_lost_connection() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    future::block_on(within(LIMIT, "malformed frames", async {
        match verdict(&a, &b, b_addr, &[7, 0, 0, 0, 1, b'x']).await {
            Some(Err(TransportError::Violation { code: 1007, reason })) => {
                assert!(reason.contains("unknown message kind 7"), "{reason}")
            }
            other => panic!("an unknown kind was not refused: {other:?}"),
        }
        match verdict(&a, &b, b_addr, &[0, 0, 0, 0, 2, 0xff, 0xfe]).await {
            Some(Err(TransportError::Violation { code: 1007, reason })) => {
                assert!(reason.contains("not UTF-8"), "{reason}")
            }
            other => panic!("a text message that is not UTF-8 was not refused: {other:?}"),
        }
        match verdict(&a, &b, b_addr, &[1, 0, 0, 0, 10, 1, 2, 3]).await {
            Some(Err(TransportError::Lost(reason))) => {
                assert!(reason.contains("middle of a message"), "{reason}")
            }
            other => panic!("a message cut short was not a lost connection: {other:?}"),
        }
        // A stream that ends between messages is an orderly end.
        assert_eq!(verdict(&a, &b, b_addr, &[]).await, None);
    }));
}

#[test]
fn a_tree_crosses_a_direct_connection_on_async_std() {
    use p2p_copy_async_std::quic as aquic;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("send");
    write_tree(&src.join("tree"), &standard_tree());
    let out = tmp.path().join("out");
    let bind = || UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let a = aquic::endpoint(bind(), Identity::generate().unwrap()).expect("an endpoint");
    let b = aquic::endpoint(bind(), Identity::generate().unwrap()).expect("an endpoint");
    let b_addr = b.local_addr().unwrap();
    let cfg = ClientConfig::new("ws://unused.invalid", "direct code 44");
    async_std::task::block_on(within(LIMIT, "a session over QUIC on async-std", async {
        let (client, server) = pair(&a, &b, b_addr).await;
        let sending = p2p_copy_async_std::send_direct(
            cfg.clone(),
            client,
            vec![src.join("tree")],
            SendOptions::default(),
            |_| {},
        );
        let receiving =
            p2p_copy_async_std::receive_direct(cfg.clone(), server, out.clone(), |_| {});
        let (sent, received) = future::zip(sending, receiving).await;
        assert_eq!(
            sent.expect("the sender succeeds").bytes,
            received.expect("the receiver succeeds").bytes
        );
    }));
    assert_same_tree(&src, &out);
}

/// Whether this process may raise socket buffers past `net.core.rmem_max`
/// (`CAP_NET_ADMIN`, bit 12 of the effective capabilities).
#[cfg(target_os = "linux")]
fn may_force_buffers() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("a CapEff line");
    u64::from_str_radix(caps.trim(), 16).expect("hex capabilities") & (1 << 12) != 0
}

#[test]
fn the_udp_socket_gets_large_kernel_buffers() {
    const ASKED: usize = 8 * 1024 * 1024;
    let fresh = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let default = socket2::SockRef::from(&fresh)
        .recv_buffer_size()
        .expect("SO_RCVBUF");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let view = socket.try_clone().expect("a second handle on the socket");
    let _endpoint = quic::endpoint(socket, Identity::generate().expect("a certificate"))
        .expect("a QUIC endpoint");
    let view = socket2::SockRef::from(&view);
    let (recv, send) = (
        view.recv_buffer_size().expect("SO_RCVBUF"),
        view.send_buffer_size().expect("SO_SNDBUF"),
    );
    assert!(
        recv > default,
        "receive buffer {recv}, a fresh socket's {default}"
    );
    #[cfg(target_os = "linux")]
    {
        // Linux reports twice what was set. Without CAP_NET_ADMIN the request is capped
        // at net.core.[rw]mem_max.
        let max = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .expect("a sysctl")
                .trim()
                .parse()
                .expect("a number")
        };
        let (want_recv, want_send) = match may_force_buffers() {
            true => (2 * ASKED, 2 * ASKED),
            false => (
                2 * ASKED.min(max("rmem_max")),
                2 * ASKED.min(max("wmem_max")),
            ),
        };
        assert_eq!(recv, want_recv, "the receive buffer");
        assert_eq!(send, want_send, "the send buffer");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ASKED, send);
}

#[test]
fn mtu_discovery_goes_past_ethernet_on_loopback() {
    let (a, _) = endpoint();
    let (b, b_addr) = endpoint();
    future::block_on(within(LIMIT, "MTU discovery on loopback", async {
        let (mut client, mut server) = pair(&a, &b, b_addr).await;
        let connection = client.connection().clone();
        // Loopback carries 64 KiB datagrams: discovery should climb far past Ethernet's
        // 1452-byte payloads, close to its 6500-byte bound, without declaring a black
        // hole. It probes while data flows.
        let mut rounds = 0;
        while connection.stats().path.current_mtu < 6000 {
            rounds += 1;
            assert!(
                rounds < 200,
                "MTU discovery stopped at {}",
                connection.stats().path.current_mtu
            );
            let msg = p2p_copy_core::WireMessage::Binary(vec![7u8; 1 << 20].into());
            send(&mut client, msg.clone()).await;
            let got = future::poll_fn(|cx| server.poll_recv(cx)).await;
            assert_eq!(got, Some(Ok(Incoming::Message(msg))));
        }
        let path = connection.stats().path;
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
    }));
}
