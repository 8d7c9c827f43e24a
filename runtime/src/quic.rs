//! The direct path: QUIC between the two peers, over one UDP socket.
//!
//! Each side makes a self-signed certificate at start ([`Identity`]) and announces its
//! SHA-256 fingerprint over the relay. The direct connection is mutually authenticated
//! by exactly those fingerprints: the connecting side accepts only the server
//! certificate it was told about, and the accepting side requires a client certificate
//! and accepts only the one it was told about. Both still check the handshake
//! signature, so holding the certificate is not enough: the peer must hold its key.
//!
//! A session runs over one bidirectional stream ([`QuicConn`]). The connecting side
//! opens it and writes [`PREFACE`], the accepting side answers with it (in TLS 1.3
//! only that answer tells the client that its certificate was accepted). The accepting
//! side takes the first bidirectional stream and no other: its peer is granted one bidirectional stream and no
//! unidirectional one, so opening more costs the accepting side nothing.
//!
//! # Framing
//! Each message is `kind (1 byte) | length (4 bytes, big-endian) | payload`, with kind
//! 0 a text message (UTF-8), 1 a binary message, 2 the close (2-byte close code, then a
//! UTF-8 reason) after which the stream ends. A length above [`MAX_MESSAGE_LEN`] is
//! refused before anything is allocated for it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_rustls::rustls;
use p2p_copy_core::wire::MAX_MESSAGE_LEN;
use p2p_copy_core::WireMessage;
use quinn::{IdleTimeout, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::transport::{Incoming, MessageTransport, TransportError};
use crate::TransferError;

/// The ALPN name of the direct path: a QUIC peer that speaks anything else is refused
/// during the handshake.
pub const ALPN: &[u8] = b"p2p-copy/1";

/// What the connecting side writes first on its stream: QUIC announces a stream only
/// when data flows on it, and the session's first message may be the accepting side's.
pub const PREFACE: &[u8; 8] = b"P2PCOPY1";

/// The name the connecting side asks for; the certificate is checked by fingerprint,
/// never by name.
const SERVER_NAME: &str = "p2p-copy";

const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;
const KIND_CLOSE: u8 = 2;
const HEADER_LEN: usize = 5;

/// The most received chunks taken from quinn at a time (see `QuicConn::poll_take`).
const READ_BATCH: usize = 32;

/// The SHA-256 of a certificate (its DER form).
pub type Fingerprint = [u8; 32];

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Sha256::digest(cert_der).into()
}

/// A fingerprint as lowercase hex, for messages.
fn hex(f: &Fingerprint) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// One side's self-signed certificate and key, made at start and never stored.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it.
    ///
    /// # Errors
    /// [`TransferError::Direct`] if no key can be made (no randomness).
    pub fn generate() -> Result<Identity, TransferError> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| TransferError::Direct(format!("cannot make a certificate: {e}")))?;
        let cert = made.cert.der().clone();
        Ok(Identity {
            fingerprint: fingerprint(&cert),
            key: Arc::new(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der())),
            cert,
        })
    }

    /// The certificate's SHA-256 fingerprint, which the peer must be told.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate in DER form.
    pub fn certificate(&self) -> &[u8] {
        &self.cert
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a connection checks the peer's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// Only the certificate with this fingerprint; `source` says where it was learned
    /// ("in its ticket"), for the error message.
    Pinned {
        /// The SHA-256 of the only certificate accepted.
        fingerprint: Fingerprint,
        /// Where the fingerprint came from, completing "the one …".
        source: &'static str,
    },
    /// Any certificate whose key signs the handshake: the caller authenticates the peer
    /// afterwards on the connection (a serverless transfer's code).
    Any,
}

/// Why a connection made with a [`PeerCheck`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// This side refused the peer's certificate.
    WrongCertificate(String),
    /// The peer refused this side's certificate.
    Refused(String),
    /// Anything else: no answer in time, a lost connection, another protocol.
    Failed(String),
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::WrongCertificate(m)
            | ConnectFailure::Refused(m)
            | ConnectFailure::Failed(m) => f.write_str(m),
        }
    }
}

/// Accepts exactly one certificate, by fingerprint, as a server's or a client's, or
/// any ([`PeerCheck::Any`]); the handshake signature is verified as usual.
#[derive(Debug)]
struct Pinned {
    expected: Option<Fingerprint>,
    /// Where the expected fingerprint was learned, completing "the one …".
    source: &'static str,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(expected: Fingerprint) -> Pinned {
        Pinned::checking(PeerCheck::Pinned {
            fingerprint: expected,
            source: "it announced over the relay",
        })
    }

    fn checking(check: PeerCheck) -> Pinned {
        let (expected, source) = match check {
            PeerCheck::Pinned {
                fingerprint,
                source,
            } => (Some(fingerprint), source),
            PeerCheck::Any => (None, ""),
        };
        Pinned {
            expected,
            source,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>, whose: &str) -> Result<(), rustls::Error> {
        let Some(expected) = self.expected else {
            return Ok(());
        };
        let got = fingerprint(cert);
        if got == expected {
            return Ok(());
        }
        Err(rustls::Error::General(format!(
            "the {whose}'s certificate is not the one {} (fingerprint {}, expected {})",
            self.source,
            hex(&got),
            hex(&expected)
        )))
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, "peer")?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, "peer")?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The largest UDP payload MTU discovery searches for and this side accepts: what a
/// 9000-byte jumbo-frame link carries over IPv4 (9000 less 20 bytes of IP and 8 of UDP).
///
/// Discovery probes upwards from [`INITIAL_UDP_PAYLOAD`] and keeps what the path
/// delivers, so a 1500-byte Ethernet path stays near 1452 bytes, while loopback and
/// jumbo-frame links get packets several times as large, and with them a fraction of the
/// per-packet work (sealing, acknowledging, system calls). quinn hands its socket up
/// to 10 packets at a time, and one GSO `sendmsg` may carry 64 KiB in all: above 6.5 KB
/// such a batch no longer fits, and the socket quinn is given (`quic_gso::GsoSocket`)
/// sends it in two calls.
/// Not the 65527 bytes UDP allows: the receive side's buffer grows with it (quinn
/// reserves 64 GRO segments times 32 datagrams of this size: 18 MiB of address space,
/// touched only as datagrams arrive).
const MAX_UDP_PAYLOAD: u16 = 8972;

/// The UDP payload a connection starts with: what a 1500-byte Ethernet path carries
/// over IPv6 (1500 less 40 bytes of IP and 8 of UDP), and over IPv4 with room to spare.
///
/// quinn's default is QUIC's minimum, 1200, and MTU discovery sends its probes only when
/// the connection has nothing else to send: during a bulk transfer that starts as soon
/// as the connection is up, it seldom has, so in the lab the packets stayed at 1200
/// bytes for the whole transfer, 22 % more of them than at 1466 (docs/BENCHMARKS.md). A
/// path that carries less (a VPN, a tunnel) loses the first packets of this size until
/// quinn's black-hole detection falls back to 1200 bytes; the handshake is unaffected
/// (its packets are padded to 1200).
const INITIAL_UDP_PAYLOAD: u16 = 1452;

/// Flow control, liveness and packet size for bulk transfer over one stream.
///
/// - Stream receive window 8 MiB: one round trip's worth at 1 Gbit/s up to 67 ms of
///   RTT (quinn's default of 1.25 MiB caps a stream at 100 Mbit/s over 100 ms). It is
///   also what a receiver that stops reading holds at most, so memory stays bounded.
/// - Connection receive window 16 MiB: the one data stream plus headroom; without a
///   bound (quinn's default) a peer could fill memory over many streams.
/// - Send window 32 MiB: the sender may keep more than one receive window in flight and
///   buffered, so that it never waits for acknowledgements while the peer's window is
///   open; the session loop's own read-ahead (a few 1 MiB pieces) is far below it.
/// - One bidirectional stream and no unidirectional ones for the peer: the session
///   needs one, and each stream the peer may open costs state here.
/// - An initial round-trip estimate of 30 ms (quinn's default is 333 ms): while hole
///   punching, the first packets are dropped until the other side's NAT has seen its
///   own packets, and the handshake is retried after about three times this estimate.
///   In the lab's cone NATs the direct path came up 0.30 s after pairing in five runs
///   of six with 100 ms, and 0.09 to 0.10 s in six of six with 30 ms. On a longer path
///   the cost is a few early resends of the first 1200-byte packet, until the first
///   round trip is measured.
/// - Keep-alive every second and an idle timeout of 5 s: a dead direct path is
///   noticed within seconds, and the session continues on the relay (NAT mappings
///   for UDP often expire after 30 s, far longer).
/// - Packets of [`INITIAL_UDP_PAYLOAD`] bytes from the start instead of 1200, and MTU
///   discovery up to [`MAX_UDP_PAYLOAD`] instead of quinn's 1452 bytes, searched to the
///   byte: with quinn's default step of 20 bytes, the search stopped at 1452 on IPv4
///   paths of 1500 bytes, which carry 1472, and every packet was 1.4 % smaller than it
///   could be.
/// - Cubic (quinn's default): on loopback nothing is lost and its window never binds;
///   BBR's pacing cut the GSO batches short and cost CPU (docs/BENCHMARKS.md).
fn transport_config() -> Arc<quinn::TransportConfig> {
    const MIB: u32 = 1024 * 1024;
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(8 * MIB))
        .receive_window(VarInt::from_u32(16 * MIB))
        .send_window(32 * u64::from(MIB))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .initial_rtt(Duration::from_millis(30))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(Duration::from_secs(5)).expect("5 s fits"),
        ));
    t.initial_mtu(INITIAL_UDP_PAYLOAD);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD).minimum_change(1);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// What each UDP socket's kernel buffers are asked to hold, each way.
///
/// The sender hands the kernel bursts of up to 20 GSO batches (about 1.3 MB at large
/// packet sizes) and the receiving task may be off the CPU for a scheduler tick; the
/// usual default of 208 KiB then overflows, and every datagram dropped there is a
/// loss that halves the congestion window. 8 MiB covers the 8 MiB stream window
/// that may be in flight.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Ask for [`SOCKET_BUFFER`] both ways. The kernel caps the ordinary request at its
/// configured maximum (`net.core.rmem_max`, often 208 KiB); on Linux a process with
/// `CAP_NET_ADMIN` may go past it, and does. Failing only costs speed, so nothing is
/// reported but a debug line.
fn size_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER) {
        log::debug!("cannot size the UDP receive buffer: {e}");
    }
    if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER) {
        log::debug!("cannot size the UDP send buffer: {e}");
    }
    #[cfg(target_os = "linux")]
    {
        // Linux reports twice what was asked (the other half is its bookkeeping), so
        // less than the request means the request was capped.
        if sock.recv_buffer_size().is_ok_and(|n| n < 2 * SOCKET_BUFFER) {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER);
        }
        if sock.send_buffer_size().is_ok_and(|n| n < 2 * SOCKET_BUFFER) {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER);
        }
    }
}

fn tls_error(e: rustls::Error) -> TransferError {
    TransferError::Direct(format!("TLS settings: {e}"))
}

fn client_config(me: &Identity, peer: Pinned) -> Result<quinn::ClientConfig, TransferError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(peer))
        .with_client_auth_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransferError::Direct(format!("TLS settings: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

fn server_config(me: &Identity, peer: Pinned) -> Result<quinn::ServerConfig, TransferError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(peer))
        .with_single_cert(
            vec![me.cert.clone()],
            PrivateKeyDer::Pkcs8(me.key.clone_key()),
        )
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransferError::Direct(format!("TLS settings: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// A QUIC endpoint on one UDP socket, which both connects and accepts.
#[derive(Debug, Clone)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    identity: Identity,
    /// The socket's batched sends, counted for `-v`.
    batches: Arc<crate::quic_gso::Batches>,
}

impl QuicEndpoint {
    /// Run QUIC on `socket` with `identity`'s certificate. `runtime` is the executor's
    /// I/O and timers for quinn (the runtime crates supply it).
    ///
    /// # Errors
    /// [`TransferError::Direct`] if the socket cannot be used or the TLS settings fail.
    pub fn new(
        socket: std::net::UdpSocket,
        identity: Identity,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> Result<QuicEndpoint, TransferError> {
        // Until a peer is known, no client certificate is acceptable: `accept` supplies
        // the settings for the one peer it waits for.
        let nobody = server_config(&identity, Pinned::new([0; 32]))?;
        size_buffers(&socket);
        let mut config = quinn::EndpointConfig::default();
        config
            .max_udp_payload_size(MAX_UDP_PAYLOAD)
            .map_err(|e| TransferError::Direct(format!("QUIC settings: {e}")))?;
        let runtime = Arc::new(crate::quic_runtime::QuicRuntime::new(runtime));
        let batches = runtime.batches();
        let endpoint = quinn::Endpoint::new(config, Some(nobody), socket, runtime)
            .map_err(|e| TransferError::Direct(format!("cannot use the UDP socket: {e}")))?;
        Ok(QuicEndpoint {
            endpoint,
            identity,
            batches,
        })
    }

    /// The local address of the UDP socket.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Close the endpoint and every connection on it at once.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"closed");
    }

    /// Close the endpoint and every connection on it, and wait until the peers were
    /// told (a refused certificate's alert, for one): until then a process that exits
    /// would take the closing packets with it. The caller bounds the wait.
    pub async fn close_and_wait(&self) {
        self.close();
        self.endpoint.wait_idle().await;
    }

    /// This side's certificate fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint
    }

    /// Connect to the peer at `addr`, accepting only the certificate with fingerprint
    /// `peer`, and open the session's stream. The caller bounds the time it may take.
    ///
    /// # Errors
    /// [`TransferError::Direct`] if the handshake fails (a different certificate on
    /// either side, another protocol) or the connection is lost.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: Fingerprint,
    ) -> Result<QuicConn, TransferError> {
        let config = client_config(&self.identity, Pinned::new(peer))?;
        let failed = |e: &dyn fmt::Display| {
            TransferError::Direct(format!(
                "the QUIC connection to {addr} failed: {e} (each side accepts only the certificate the other announced)"
            ))
        };
        let connection = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
        send.write_all(PREFACE).await.map_err(|e| failed(&e))?;
        // In TLS 1.3 the client's handshake completes before the server has checked the
        // client's certificate: only the server's answer shows that it accepted this side.
        read_preface(&connection, &mut recv)
            .await
            .map_err(|e| failed(&e))?;
        Ok(QuicConn::new(self, connection, send, recv))
    }

    /// Accept the next connection, requiring the client certificate with fingerprint
    /// `peer`, and take its first bidirectional stream. The caller bounds the time it
    /// may take.
    ///
    /// # Errors
    /// [`TransferError::Direct`] if the endpoint is closed, the handshake fails (a
    /// different certificate on either side, another protocol), or the peer's stream
    /// does not start with [`PREFACE`].
    pub async fn accept(&self, peer: Fingerprint) -> Result<QuicConn, TransferError> {
        let incoming = self
            .endpoint
            .accept()
            .await
            .ok_or_else(|| TransferError::Direct("the QUIC endpoint is closed".into()))?;
        let addr = incoming.remote_address();
        let failed = |e: &dyn fmt::Display| {
            TransferError::Direct(format!(
                "the QUIC connection from {addr} failed: {e} (each side accepts only the certificate the other announced)"
            ))
        };
        let config = Arc::new(server_config(&self.identity, Pinned::new(peer))?);
        let connection = incoming
            .accept_with(config)
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| failed(&e))?;
        read_preface(&connection, &mut recv)
            .await
            .map_err(|e| failed(&e))?;
        send.write_all(PREFACE).await.map_err(|e| failed(&e))?;
        Ok(QuicConn::new(self, connection, send, recv))
    }
}

impl QuicEndpoint {
    /// Connect to `addr` checking the server's certificate by `check`, and open the
    /// session's stream, as [`QuicEndpoint::connect`] does. The caller bounds the time.
    ///
    /// # Errors
    /// [`ConnectFailure`]: which side refused which certificate, or what else failed.
    pub async fn connect_checked(
        &self,
        addr: SocketAddr,
        check: PeerCheck,
    ) -> Result<QuicConn, ConnectFailure> {
        let config = client_config(&self.identity, Pinned::checking(check))
            .map_err(|e| ConnectFailure::Failed(e.to_string()))?;
        let connection = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| ConnectFailure::Failed(e.to_string()))?
            .await
            .map_err(|e| classify(&e))?;
        let stream = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(PREFACE).await.map_err(|e| e.to_string())?;
            read_preface(&connection, &mut recv).await?;
            Ok::<_, String>((send, recv))
        };
        match stream.await {
            Ok((send, recv)) => Ok(QuicConn::new(self, connection, send, recv)),
            // In TLS 1.3 the server checks the client's certificate after the client's
            // handshake completed: its refusal shows as the connection's close.
            Err(e) => Err(connection
                .close_reason()
                .map_or(ConnectFailure::Failed(e), |r| classify(&r))),
        }
    }

    /// Accept the next connection checking the client's certificate by `check`, and take
    /// its stream, as [`QuicEndpoint::accept`] does; also the address it came from. The
    /// caller bounds the time.
    ///
    /// # Errors
    /// The address the attempt came from (when one came) and the [`ConnectFailure`].
    pub async fn accept_checked(
        &self,
        check: PeerCheck,
    ) -> Result<QuicConn, (Option<SocketAddr>, ConnectFailure)> {
        let incoming = self.endpoint.accept().await.ok_or_else(|| {
            (
                None,
                ConnectFailure::Failed("the QUIC endpoint is closed".into()),
            )
        })?;
        let addr = incoming.remote_address();
        let fail = |f: ConnectFailure| (Some(addr), f);
        let config = Arc::new(
            server_config(&self.identity, Pinned::checking(check))
                .map_err(|e| fail(ConnectFailure::Failed(e.to_string())))?,
        );
        let connection = incoming
            .accept_with(config)
            .map_err(|e| fail(ConnectFailure::Failed(e.to_string())))?
            .await
            .map_err(|e| fail(classify(&e)))?;
        let stream = async {
            let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
            read_preface(&connection, &mut recv).await?;
            send.write_all(PREFACE).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv))
        };
        match stream.await {
            Ok((send, recv)) => Ok(QuicConn::new(self, connection, send, recv)),
            Err(e) => Err(fail(
                connection
                    .close_reason()
                    .map_or(ConnectFailure::Failed(e), |r| classify(&r)),
            )),
        }
    }
}

/// Which side refused which certificate, from how a connection failed: a TLS alert
/// (QUIC's crypto error codes 0x100-0x1ff) raised here means this side refused the
/// peer's certificate, one received means the peer refused this side's.
fn classify(e: &quinn::ConnectionError) -> ConnectFailure {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) if crypto(t.code) => {
            ConnectFailure::WrongCertificate(t.reason.clone())
        }
        quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
            ConnectFailure::Refused(format!("the peer refused this side's certificate ({e})"))
        }
        other => ConnectFailure::Failed(other.to_string()),
    }
}

/// Read the peer's [`PREFACE`]; close the connection if something else comes.
async fn read_preface(
    connection: &quinn::Connection,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    let mut preface = [0u8; PREFACE.len()];
    recv.read_exact(&mut preface)
        .await
        .map_err(|e| e.to_string())?;
    if &preface != PREFACE {
        connection.close(VarInt::from_u32(1), b"not p2p-copy");
        return Err("the peer's stream does not start as p2p-copy's does".into());
    }
    Ok(())
}

type Stopped = Pin<Box<dyn Future<Output = Result<Option<VarInt>, quinn::StoppedError>> + Send>>;

/// Where reading a message stands.
enum ReadState {
    /// Reading the 5-byte header; this many bytes are in.
    Header(usize),
    /// Reading a payload of the given kind and length into `payload`.
    Payload(u8, usize),
    /// The stream ended or failed: nothing more comes.
    Done,
}

/// A session's messages over one bidirectional QUIC stream (see the module docs for the
/// framing).
pub struct QuicConn {
    // Kept so the endpoint's driver runs as long as the connection does.
    _endpoint: quinn::Endpoint,
    batches: Arc<crate::quic_gso::Batches>,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Chunks read from `recv` and not yet taken by a message.
    held: VecDeque<Bytes>,
    /// Framed bytes not yet taken by the stream.
    pending: VecDeque<Bytes>,
    /// The close is queued: after it, the stream is finished and the peer's
    /// acknowledgement awaited.
    closing: bool,
    stopped: Option<Stopped>,
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    state: ReadState,
}

impl fmt::Debug for QuicConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConn")
            .field("remote", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicConn {
    fn new(
        endpoint: &QuicEndpoint,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> QuicConn {
        QuicConn {
            _endpoint: endpoint.endpoint.clone(),
            batches: endpoint.batches.clone(),
            connection,
            send,
            recv,
            held: VecDeque::new(),
            pending: VecDeque::new(),
            closing: false,
            stopped: None,
            header: [0; HEADER_LEN],
            payload: Vec::new(),
            state: ReadState::Header(0),
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The SHA-256 fingerprint of the certificate the peer presented.
    pub fn peer_fingerprint(&self) -> Option<Fingerprint> {
        let identity = self.connection.peer_identity()?;
        let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        certs.first().map(|c| fingerprint(c))
    }

    /// 32 bytes of the TLS exporter (RFC 8446, section 7.5) for `label`: the same on both
    /// ends of this connection, and unknown to anyone else, also to a machine in the
    /// middle that holds a connection to each side.
    pub fn exporter(&self, label: &[u8]) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        self.connection
            .export_keying_material(&mut out, label, b"")
            .ok()?;
        Some(out)
    }

    /// What the connection did, in one line for `-v`: the packet size MTU discovery
    /// reached, the round trip, datagrams, the batches quinn made of them and the system
    /// calls that carried them, the socket reads that brought datagrams in (those two
    /// are the endpoint's, all its connections'), losses.
    pub fn stats_summary(&self) -> String {
        let s = self.connection.stats();
        format!(
            "connection with {}: MTU {} bytes ({} of {} probes lost, {} black holes), RTT \
             {:.2} ms, sent {} datagrams in {} batches and {} system calls, received {} \
             datagrams in {} reads, {} lost, {} congestion events, congestion window {} KB, \
             {} ACK frames received",
            self.connection.remote_address(),
            s.path.current_mtu,
            s.path.lost_plpmtud_probes,
            s.path.sent_plpmtud_probes,
            s.path.black_holes_detected,
            s.path.rtt.as_secs_f64() * 1e3,
            s.udp_tx.datagrams,
            s.udp_tx.ios,
            self.batches.calls(),
            s.udp_rx.datagrams,
            self.batches.reads(),
            s.path.lost_packets,
            s.path.congestion_events,
            s.path.cwnd / 1000,
            s.frame_rx.acks,
        )
    }

    /// The underlying QUIC connection, for statistics and tests.
    #[doc(hidden)]
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The connection and the session's stream, for tests that write what a correct
    /// peer never would.
    #[doc(hidden)]
    pub fn into_parts(self) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
        (self.connection, self.send, self.recv)
    }

    fn queue(&mut self, kind: u8, payload: Bytes) {
        let mut header = [0u8; HEADER_LEN];
        header[0] = kind;
        // Every message is at most MAX_MESSAGE_LEN (2 MiB), far below 4 GiB.
        header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        self.pending.push_back(Bytes::copy_from_slice(&header));
        if !payload.is_empty() {
            self.pending.push_back(payload);
        }
    }

    /// Hand pending bytes to the stream until all are taken.
    ///
    /// The chunks are handed over as they are (quinn keeps the `Bytes`), not copied
    /// into the stream's buffer as `poll_write` would: a file piece is never copied
    /// between the file access and the packet being sealed.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.pending.is_empty() {
            let (chunks, _) = self.pending.as_mut_slices();
            // Polled once and dropped: quinn's write_chunks takes nothing unless it
            // resolves, and registers the waker when the window is full.
            let written = {
                let write = self.send.write_chunks(chunks);
                let mut write = std::pin::pin!(write);
                ready!(write.as_mut().poll(cx))
            }
            .map_err(|e| TransportError::Lost(format!("the direct connection failed: {e}")))?;
            // Fully written chunks are emptied, a partly written one keeps its tail.
            self.pending.drain(..written.chunks);
        }
        Poll::Ready(Ok(()))
    }

    /// The stream's next bytes, at most `max` of them (`max` > 0); `Ok(None)` if the
    /// stream ended.
    ///
    /// quinn hands out up to [`READ_BATCH`] received chunks (about a packet each) per
    /// call and per lock of the connection's state, which its driver also takes for
    /// every packet it handles: one `read_chunk` per chunk took that lock about 750
    /// times per MiB. A batch may run past the message being read; the rest stays in
    /// `held` for the next one.
    fn poll_take(
        recv: &mut quinn::RecvStream,
        cx: &mut Context<'_>,
        held: &mut VecDeque<Bytes>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, TransportError>> {
        loop {
            if let Some(front) = held.front_mut() {
                if front.len() <= max {
                    return Poll::Ready(Ok(held.pop_front()));
                }
                return Poll::Ready(Ok(Some(front.split_to(max))));
            }
            let mut batch: [Bytes; READ_BATCH] = Default::default();
            // Polled once and dropped: quinn's read_chunks takes nothing unless it
            // resolves.
            let got = {
                let read = recv.read_chunks(&mut batch);
                let mut read = std::pin::pin!(read);
                ready!(read.as_mut().poll(cx))
            }
            .map_err(|e| TransportError::Lost(format!("the direct connection failed: {e}")))?;
            match got {
                Some(n) => held.extend(batch.into_iter().take(n).filter(|b| !b.is_empty())),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Fill `buf` from the stream, `filled` bytes of it already; `Ok(false)` if the
    /// stream ended first.
    fn poll_fill(
        recv: &mut quinn::RecvStream,
        cx: &mut Context<'_>,
        held: &mut VecDeque<Bytes>,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> Poll<Result<bool, TransportError>> {
        while *filled < buf.len() {
            let Some(chunk) = ready!(Self::poll_take(recv, cx, held, buf.len() - *filled))? else {
                return Poll::Ready(Ok(false));
            };
            buf[*filled..*filled + chunk.len()].copy_from_slice(&chunk);
            *filled += chunk.len();
        }
        Poll::Ready(Ok(true))
    }

    /// Append to `buf` from the stream until it holds `len` bytes; `Ok(false)` if the
    /// stream ended first.
    ///
    /// The stream's received chunks are copied straight into `buf`, which was only
    /// reserved: nothing is zeroed first, as a `poll_read` into a slice would need.
    fn poll_fill_vec(
        recv: &mut quinn::RecvStream,
        cx: &mut Context<'_>,
        held: &mut VecDeque<Bytes>,
        buf: &mut Vec<u8>,
        len: usize,
    ) -> Poll<Result<bool, TransportError>> {
        while buf.len() < len {
            let Some(chunk) = ready!(Self::poll_take(recv, cx, held, len - buf.len()))? else {
                return Poll::Ready(Ok(false));
            };
            buf.extend_from_slice(&chunk);
        }
        Poll::Ready(Ok(true))
    }

    fn violation(&mut self, code: u16, reason: String) -> TransportError {
        self.state = ReadState::Done;
        // Nothing more is read: tell the peer's QUIC stack to stop sending.
        let _ = self.recv.stop(VarInt::from_u32(u32::from(code)));
        TransportError::Violation { code, reason }
    }

    fn decode(&mut self, kind: u8, payload: Vec<u8>) -> Result<Incoming, TransportError> {
        match kind {
            KIND_BINARY => Ok(Incoming::Message(WireMessage::Binary(Bytes::from(payload)))),
            KIND_TEXT => match String::from_utf8(payload) {
                Ok(text) => Ok(Incoming::Message(WireMessage::Text(text))),
                Err(_) => Err(self.violation(1007, "a text message is not UTF-8".into())),
            },
            _ => {
                if payload.len() < 2 {
                    return Err(self.violation(1007, "a close message without a code".into()));
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                match String::from_utf8(payload[2..].to_vec()) {
                    Ok(reason) => Ok(Incoming::Close(Some((code, reason)))),
                    Err(_) => Err(self.violation(1007, "a close reason is not UTF-8".into())),
                }
            }
        }
    }
}

impl MessageTransport for QuicConn {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // quinn buffers up to the send window: a message is taken once the previous one
        // is in that buffer, so the window, not this queue, is the backpressure.
        self.poll_write_pending(cx)
    }

    fn start_send(&mut self, msg: WireMessage) -> Result<(), TransportError> {
        if self.closing {
            return Err(TransportError::Lost(
                "the direct connection is closing".into(),
            ));
        }
        match msg {
            WireMessage::Text(t) => self.queue(KIND_TEXT, Bytes::from(t.into_bytes())),
            WireMessage::Binary(b) => self.queue(KIND_BINARY, b),
        }
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        ready!(self.poll_write_pending(cx))?;
        if !self.closing {
            return Poll::Ready(Ok(()));
        }
        if self.stopped.is_none() {
            let _ = self.send.finish();
            self.stopped = Some(Box::pin(self.send.stopped()));
        }
        // The close is delivered once the peer has acknowledged the whole stream;
        // dropping the connection before would discard what is still in flight.
        let stopped = self.stopped.as_mut().expect("set above");
        match ready!(stopped.as_mut().poll(cx)) {
            Ok(None) => Poll::Ready(Ok(())),
            Ok(Some(code)) => Poll::Ready(Err(TransportError::Lost(format!(
                "the peer stopped reading (code {code})"
            )))),
            Err(e) => Poll::Ready(Err(TransportError::Lost(format!(
                "the direct connection failed: {e}"
            )))),
        }
    }

    fn start_close(&mut self, code: u16, reason: &str) -> Result<(), TransportError> {
        if self.closing {
            return Ok(());
        }
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.queue(KIND_CLOSE, Bytes::from(payload));
        self.closing = true;
        Ok(())
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, TransportError>>> {
        loop {
            match self.state {
                ReadState::Done => return Poll::Ready(None),
                ReadState::Header(mut filled) => {
                    let got = Self::poll_fill(
                        &mut self.recv,
                        cx,
                        &mut self.held,
                        &mut self.header,
                        &mut filled,
                    );
                    self.state = ReadState::Header(filled);
                    match ready!(got) {
                        Err(e) => {
                            self.state = ReadState::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Ok(false) if filled == 0 => {
                            self.state = ReadState::Done;
                            return Poll::Ready(None);
                        }
                        Ok(false) => {
                            self.state = ReadState::Done;
                            return Poll::Ready(Some(Err(TransportError::Lost(
                                "the direct connection ended in the middle of a message".into(),
                            ))));
                        }
                        Ok(true) => {}
                    }
                    let kind = self.header[0];
                    let len = u32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]) as usize;
                    if kind > KIND_CLOSE {
                        let e = self.violation(1007, format!("unknown message kind {kind}"));
                        return Poll::Ready(Some(Err(e)));
                    }
                    // Checked before anything is allocated: the length is the peer's
                    // claim, not data that has arrived.
                    if len > MAX_MESSAGE_LEN {
                        let e = self.violation(
                            1009,
                            format!(
                                "a message of {len} bytes is larger than the limit of {MAX_MESSAGE_LEN}"
                            ),
                        );
                        return Poll::Ready(Some(Err(e)));
                    }
                    self.payload = Vec::with_capacity(len);
                    self.state = ReadState::Payload(kind, len);
                }
                ReadState::Payload(kind, len) => {
                    let got = Self::poll_fill_vec(
                        &mut self.recv,
                        cx,
                        &mut self.held,
                        &mut self.payload,
                        len,
                    );
                    match ready!(got) {
                        Err(e) => {
                            self.state = ReadState::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Ok(false) => {
                            self.state = ReadState::Done;
                            return Poll::Ready(Some(Err(TransportError::Lost(
                                "the direct connection ended in the middle of a message".into(),
                            ))));
                        }
                        Ok(true) => {}
                    }
                    self.state = ReadState::Header(0);
                    let payload = std::mem::take(&mut self.payload);
                    return Poll::Ready(Some(self.decode(kind, payload)));
                }
            }
        }
    }
}
