//! STUN on the relay and the STUN client on async-std, over UDP on 127.0.0.1.

use std::time::{Duration, Instant};

use async_std::net::UdpSocket;
use p2p_copy_async_std::{stun_query, RelayServer, RelayServerConfig, StunPorts, StunQueryError};

#[test]
fn relay_answers_each_port_with_the_clients_own_address() {
    async_std::task::block_on(async {
        let server = RelayServer::bind(RelayServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            tls: None,
            relay: Default::default(),
            stun: StunPorts::SameAsListener,
            ops: Default::default(),
        })
        .await
        .unwrap();
        let addrs = server.stun_addrs().to_vec();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        let serving = async_std::task::spawn(server.run());
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for addr in &addrs {
            let deadline = Instant::now() + Duration::from_secs(5);
            let seen = stun_query(&socket, *addr, deadline).await.unwrap();
            assert_eq!(seen, socket.local_addr().unwrap());
        }
        serving.cancel().await;
        let deadline = Instant::now() + Duration::from_millis(600);
        let err = stun_query(&socket, addrs[1], deadline).await.unwrap_err();
        assert!(matches!(err, StunQueryError::Timeout { .. }), "{err}");
    });
}
