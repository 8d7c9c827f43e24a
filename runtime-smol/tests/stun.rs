//! STUN on the relay and the STUN client, over real UDP sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_copy_core::stun;
use p2p_copy_smol::{stun_query, RelayServer, RelayServerConfig, StunPorts, StunQueryError};
use smol::net::UdpSocket;

async fn relay(stun: StunPorts) -> std::io::Result<RelayServer> {
    RelayServer::bind(RelayServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        tls: None,
        relay: Default::default(),
        stun,
        ops: Default::default(),
    })
    .await
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn in_secs(s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(s)
}

/// Every datagram that arrives on `socket` within `wait`.
async fn drain(socket: &UdpSocket, wait: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let recv = async { Some(socket.recv_from(&mut buf).await.unwrap()) };
        let timeout = async {
            smol::Timer::at(until).await;
            None
        };
        match smol::future::or(recv, timeout).await {
            Some((n, from)) => got.push((buf[..n].to_vec(), from)),
            None => return got,
        }
    }
}

#[test]
fn relay_answers_each_port_with_the_clients_own_address() {
    smol::block_on(async {
        let server = relay(StunPorts::SameAsListener).await.unwrap();
        let addrs = server.stun_addrs().to_vec();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert_ne!(addrs[0], addrs[1]);
        let serving = smol::spawn(server.run());
        let socket = client().await;
        let own = socket.local_addr().unwrap();
        for addr in &addrs {
            let seen = stun_query(&socket, *addr, in_secs(5.0)).await.unwrap();
            assert_eq!(seen, own);
        }
        // Dropping the server stops STUN too.
        drop(serving);
        let err = stun_query(&socket, addrs[0], in_secs(0.6))
            .await
            .unwrap_err();
        assert!(matches!(err, StunQueryError::Timeout { .. }), "{err}");
    });
}

#[test]
fn relay_does_not_answer_what_is_not_a_binding_request() {
    smol::block_on(async {
        let server = relay(StunPorts::SameAsListener).await.unwrap();
        let addr = server.stun_addrs()[0];
        let _serving = smol::spawn(server.run());
        let socket = client().await;
        let mut indication = stun::binding_request([7; 12]);
        indication[1] = 0x11;
        let mut unknown_attr = stun::binding_request([8; 12]);
        unknown_attr[3] = 8;
        unknown_attr.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        for datagram in [
            &b"hello, is this STUN?"[..],
            &[0xc3; 40][..],
            &indication,
            &unknown_attr,
        ] {
            socket.send_to(datagram, addr).await.unwrap();
        }
        let got = drain(&socket, Duration::from_millis(500)).await;
        assert!(got.is_empty(), "answered: {got:?}");
        // The same socket does get an answer to a real request.
        socket
            .send_to(&stun::binding_request([9; 12]), addr)
            .await
            .unwrap();
        let got = drain(&socket, Duration::from_millis(500)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            stun::parse_binding_response(&got[0].0, &[9; 12]),
            Ok(socket.local_addr().unwrap())
        );
    });
}

#[test]
fn a_flood_beyond_the_rate_limit_is_not_all_answered() {
    smol::block_on(async {
        let server = relay(StunPorts::SameAsListener).await.unwrap();
        let addrs = server.stun_addrs().to_vec();
        let _serving = smol::spawn(server.run());
        let socket = client().await;
        let sent = 400u32;
        for i in 0..sent {
            let mut txid = [0; 12];
            txid[..4].copy_from_slice(&i.to_be_bytes());
            // Split over both ports: the limit is per source, not per port.
            let to = addrs[i as usize % 2];
            socket
                .send_to(&stun::binding_request(txid), to)
                .await
                .unwrap();
        }
        let answered = drain(&socket, Duration::from_millis(500)).await.len();
        // A burst of 16 and 8 a second after it; generous bounds for a loaded machine.
        assert!(
            (16..=40).contains(&answered),
            "{answered} of {sent} requests answered"
        );
    });
}

#[test]
fn stun_can_be_off_and_refuses_port_65535() {
    smol::block_on(async {
        let server = relay(StunPorts::Off).await.unwrap();
        assert!(server.stun_addrs().is_empty());
        let err = relay(StunPorts::Port(65535)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        // A taken port is an error that names it.
        let taken = client().await;
        let port = taken.local_addr().unwrap().port();
        let err = relay(StunPorts::Port(port)).await.unwrap_err();
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    });
}

#[test]
fn query_times_out_when_nobody_answers() {
    smol::block_on(async {
        let silent = client().await;
        let socket = client().await;
        let started = Instant::now();
        let err = stun_query(&socket, silent.local_addr().unwrap(), in_secs(1.0))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        match err {
            // 250 ms, 500 ms, then the deadline: three requests.
            StunQueryError::Timeout { requests, .. } => assert_eq!(requests, 3),
            e => panic!("{e}"),
        }
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(3));
        // The silent server really saw retransmissions of one transaction.
        let got = drain(&silent, Duration::from_millis(100)).await;
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(d, _)| d == &got[0].0));
    });
}

#[test]
fn query_ignores_answers_from_other_addresses_and_transactions() {
    smol::block_on(async {
        let server = client().await;
        let forger = client().await;
        let socket = client().await;
        let server_addr = server.local_addr().unwrap();
        let own = socket.local_addr().unwrap();
        let fake: SocketAddr = "6.6.6.6:666".parse().unwrap();
        let playing = async {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let request = stun::parse_binding_request(&buf[..n]).unwrap();
            // A correct answer, but from an address the client never asked.
            forger
                .send_to(&request.success_response(fake), from)
                .await
                .unwrap();
            // From the server, but for another transaction.
            let other = stun::parse_binding_request(&stun::binding_request([1; 12])).unwrap();
            server
                .send_to(&other.success_response(fake), from)
                .await
                .unwrap();
            // Not STUN at all.
            server.send_to(b"noise", from).await.unwrap();
            server
                .send_to(&request.success_response(from), from)
                .await
                .unwrap();
        };
        let (seen, ()) =
            smol::future::zip(stun_query(&socket, server_addr, in_secs(5.0)), playing).await;
        assert_eq!(seen.unwrap(), own);
    });
}

#[test]
fn query_reports_an_error_answer() {
    smol::block_on(async {
        let server = client().await;
        let socket = client().await;
        let server_addr = server.local_addr().unwrap();
        let playing = async {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            // Binding error response, same transaction, ERROR-CODE 400 "Bad".
            let mut answer = buf[..20].to_vec();
            answer[..4].copy_from_slice(&[0x01, 0x11, 0x00, 0x0c]);
            answer.extend_from_slice(&[0x00, 0x09, 0x00, 0x07, 0, 0, 4, 0, b'B', b'a', b'd', 0]);
            assert_eq!(n, 20);
            server.send_to(&answer, from).await.unwrap();
        };
        let (res, ()) =
            smol::future::zip(stun_query(&socket, server_addr, in_secs(5.0)), playing).await;
        match res {
            Err(StunQueryError::Refused {
                error: stun::StunError::ErrorResponse { code: 400, .. },
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    });
}
