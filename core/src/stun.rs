//! STUN (RFC 8489) Binding, the one exchange a client needs to learn its reflexive address
//! and the one a relay answers, as pure functions over bytes.
//!
//! Nothing here opens a socket, reads a clock or draws randomness: the caller supplies the
//! transaction id (from its own seeded or OS randomness) and the datagrams, and sends what
//! comes back. The messages themselves are read and written by the `stun-types` codec;
//! this module adds the framing checks a UDP datagram needs and the policy of what to
//! accept and what to answer.
//!
//! A client:
//! 1. `let request = binding_request(txid)`, send it to the server;
//! 2. for each datagram that comes back from the server's address,
//!    `parse_binding_response(&datagram, &txid)`: `Ok(addr)` is the reflexive address;
//!    [`StunError::WrongTransaction`] and friends mean "not our answer, keep waiting".
//!
//! A server: for each datagram, `answer_binding_request(&datagram, source)`, and send the
//! answer (if any) back to `source`.
//!
//! # What the server answers
//! Only a well-formed Binding request (right length, magic cookie, valid FINGERPRINT if one
//! is present) whose attributes are all comprehension-optional (`0x8000..`). The answer is a
//! Binding success response with XOR-MAPPED-ADDRESS and nothing else, so it tells the client
//! only its own address as the server saw it, and it is at most [`MAX_RESPONSE_GROWTH`]
//! bytes larger than the request: a forged source address cannot use the server to amplify
//! traffic.
//!
//! RFC 8489 §6.3.1 asks a server to answer a request carrying unknown
//! comprehension-required attributes with a 420 error. This server stays silent instead:
//! such a request (an ICE connectivity check with USERNAME and MESSAGE-INTEGRITY, a TURN
//! request) is meant for some other kind of agent, and silence gives a spoofed sender
//! nothing at all. Every other request that is not answered is dropped silently too.

use std::net::SocketAddr;

use stun_types::attribute::{
    Attribute, AttributeStaticType, AttributeType, ErrorCode, MessageIntegrity,
    MessageIntegritySha256, XorMappedAddress,
};
use stun_types::message::{
    Message, MessageClass, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
    TransactionId as CodecTransactionId, BINDING,
};

/// The fixed value of bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN header: type, length, cookie, transaction id.
pub const HEADER_LEN: usize = 20;

/// How many bytes a response may be larger than the request it answers.
///
/// The smallest request is a bare header (20 bytes); the largest answer is a header plus an
/// IPv6 XOR-MAPPED-ADDRESS (20 + 4 + 20 = 44 bytes).
pub const MAX_RESPONSE_GROWTH: usize = 24;

/// The 96-bit transaction id that ties a response to its request.
pub type TransactionId = [u8; 12];

/// MAPPED-ADDRESS: RFC 3489 servers and many RFC 8489 servers add it next to the XOR form.
const MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0001);
/// SOURCE-ADDRESS and CHANGED-ADDRESS: RFC 3489 attributes that old servers still send.
const SOURCE_ADDRESS: AttributeType = AttributeType::new(0x0004);
const CHANGED_ADDRESS: AttributeType = AttributeType::new(0x0005);

/// Comprehension-required attributes a client understands in a Binding success response.
/// MESSAGE-INTEGRITY can only be checked with credentials a Binding without authentication
/// never has; the transaction id is what ties the response to us, so it is accepted unread.
const KNOWN_IN_RESPONSE: [AttributeType; 7] = [
    XorMappedAddress::TYPE,
    MAPPED_ADDRESS,
    SOURCE_ADDRESS,
    CHANGED_ADDRESS,
    ErrorCode::TYPE,
    MessageIntegrity::TYPE,
    MessageIntegritySha256::TYPE,
];

/// Why a datagram is not the STUN message that was expected.
///
/// Every variant describes the datagram, never a fault of the caller: a client that gets
/// one for a datagram keeps waiting for the right answer (or gives up at its deadline).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Shorter than its header or than the length the header declares.
    #[error("truncated STUN message: {actual} bytes, {expected} needed")]
    Truncated {
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The first two bits are not zero or the magic cookie is wrong: not STUN at all
    /// (or an RFC 3489 message, which has no cookie).
    #[error("not a STUN message (first two bits or magic cookie wrong)")]
    NotStun,
    /// More bytes than the header declares, or a length that is not a multiple of 4.
    #[error("bad STUN length: header declares {declared} bytes of attributes, datagram carries {actual}")]
    BadLength {
        /// Attribute bytes the header declares.
        declared: usize,
        /// Attribute bytes the datagram carries.
        actual: usize,
    },
    /// The codec refused the attributes (one runs past the end, a FINGERPRINT mismatch, an
    /// address of the wrong length).
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    /// A well-formed message, but not for the transaction we started.
    #[error("STUN transaction id does not match the request")]
    WrongTransaction,
    /// A well-formed message of a method or class other than the one expected.
    #[error("unexpected STUN message: method {method:#06x}, {class}")]
    Unexpected {
        /// The message's method.
        method: u16,
        /// Its class: request, indication, success or error.
        class: &'static str,
    },
    /// The server answered our request with an error response.
    #[error("STUN server answered with error {code}: {reason}")]
    ErrorResponse {
        /// The ERROR-CODE number (0 when the attribute is missing or unreadable).
        code: u16,
        /// Its reason phrase, as sent.
        reason: String,
    },
    /// The message carries a comprehension-required attribute this code does not know,
    /// so RFC 8489 forbids acting on it.
    #[error("STUN message carries unknown comprehension-required attribute {0:#06x}")]
    UnknownAttribute(u16),
    /// A success response without the XOR-MAPPED-ADDRESS it exists to carry.
    #[error("STUN success response has no XOR-MAPPED-ADDRESS")]
    NoMappedAddress,
}

/// Whether a datagram may be STUN: at least a header long, first two bits zero and the
/// magic cookie in place.
///
/// This is the demultiplexing test of RFC 7983 for a UDP socket that also carries QUIC:
/// every QUIC packet has one of its first two bits set, so a `false` here means "hand it
/// to QUIC". A `true` only says it is worth parsing.
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] & 0xc0 == 0
        && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// Encode a Binding request with the given transaction id and no attributes (20 bytes).
///
/// The caller draws `txid` from a good random source: it is what keeps an off-path
/// attacker from forging the answer.
pub fn binding_request(txid: TransactionId) -> Vec<u8> {
    Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        codec_txid(txid),
        MessageWriteVec::with_capacity(HEADER_LEN),
    )
    .finish()
}

/// Read a datagram as the answer to the Binding request `txid` and return the reflexive
/// address it reports.
///
/// The caller must also check that the datagram came from the server it asked: this
/// function sees bytes only.
///
/// # Errors
/// - framing: [`StunError::Truncated`], [`StunError::NotStun`], [`StunError::BadLength`],
///   [`StunError::Malformed`];
/// - a message for some other transaction: [`StunError::WrongTransaction`];
/// - not a Binding response: [`StunError::Unexpected`]; a Binding error response:
///   [`StunError::ErrorResponse`];
/// - a success response that RFC 8489 says to discard ([`StunError::UnknownAttribute`]) or
///   that lacks its address ([`StunError::NoMappedAddress`]).
pub fn parse_binding_response(
    datagram: &[u8],
    txid: &TransactionId,
) -> Result<SocketAddr, StunError> {
    let msg = frame(datagram)?;
    if datagram[8..HEADER_LEN] != txid[..] {
        return Err(StunError::WrongTransaction);
    }
    if !msg.has_method(BINDING) {
        return Err(unexpected(&msg));
    }
    match msg.class() {
        MessageClass::Success => {}
        MessageClass::Error => {
            let (code, reason) = match msg.attribute::<ErrorCode>() {
                Ok(e) => (e.code(), e.reason().to_owned()),
                Err(_) => (0, String::new()),
            };
            return Err(StunError::ErrorResponse { code, reason });
        }
        _ => return Err(unexpected(&msg)),
    }
    check_known(&msg, &KNOWN_IN_RESPONSE)?;
    match msg.attribute::<XorMappedAddress>() {
        Ok(xor) => Ok(xor.addr(msg.transaction_id())),
        Err(stun_types::message::StunParseError::MissingAttribute(_)) => {
            Err(StunError::NoMappedAddress)
        }
        Err(e) => Err(StunError::Malformed(e.to_string())),
    }
}

/// A Binding request a server may answer, read by [`parse_binding_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    txid: TransactionId,
}

impl BindingRequest {
    /// The request's transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.txid
    }

    /// The Binding success response telling the requester that it was seen at `source`:
    /// a header and one XOR-MAPPED-ADDRESS, 32 bytes for IPv4 and 44 for IPv6.
    pub fn success_response(&self, source: SocketAddr) -> Vec<u8> {
        let txid = codec_txid(self.txid);
        let mut out = Message::builder(
            MessageType::from_class_method(MessageClass::Success, BINDING),
            txid,
            MessageWriteVec::with_capacity(HEADER_LEN + 24),
        );
        // The builder refuses an attribute only after MESSAGE-INTEGRITY or FINGERPRINT, or
        // a second one of the same type; a fresh message has neither.
        out.add_attribute(&XorMappedAddress::new(source, txid))
            .expect("first attribute of a fresh message");
        out.finish()
    }
}

/// Read a datagram as a Binding request that a server answers.
///
/// # Errors
/// The framing errors of [`parse_binding_response`]; [`StunError::Unexpected`] for any
/// other method or class; [`StunError::UnknownAttribute`] for a comprehension-required
/// attribute (this server knows none in a request; see the module docs).
pub fn parse_binding_request(datagram: &[u8]) -> Result<BindingRequest, StunError> {
    let msg = frame(datagram)?;
    if !(msg.has_method(BINDING) && msg.has_class(MessageClass::Request)) {
        return Err(unexpected(&msg));
    }
    check_known(&msg, &[])?;
    let mut txid = [0; 12];
    txid.copy_from_slice(&datagram[8..HEADER_LEN]);
    Ok(BindingRequest { txid })
}

/// The answer a server sends back to `source` for `datagram`, or `None` when it sends
/// nothing (anything but a well-formed Binding request with only optional attributes).
///
/// An answer is never more than [`MAX_RESPONSE_GROWTH`] bytes longer than `datagram`.
pub fn answer_binding_request(datagram: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    parse_binding_request(datagram)
        .ok()
        .map(|request| request.success_response(source))
}

/// Check the UDP framing (a datagram holds exactly one message) and parse the attributes.
fn frame(datagram: &[u8]) -> Result<Message<'_>, StunError> {
    if datagram.len() < HEADER_LEN {
        return Err(StunError::Truncated {
            expected: HEADER_LEN,
            actual: datagram.len(),
        });
    }
    if !looks_like_stun(datagram) {
        return Err(StunError::NotStun);
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let actual = datagram.len() - HEADER_LEN;
    if declared > actual {
        return Err(StunError::Truncated {
            expected: HEADER_LEN + declared,
            actual: datagram.len(),
        });
    }
    // The codec reads attributes to the end of the slice it is given, so trailing bytes
    // would be taken as attributes the header never declared.
    if declared < actual || declared % 4 != 0 {
        return Err(StunError::BadLength { declared, actual });
    }
    Message::from_bytes(datagram).map_err(|e| StunError::Malformed(e.to_string()))
}

/// Fail on the first comprehension-required attribute not in `known`.
fn check_known(msg: &Message<'_>, known: &[AttributeType]) -> Result<(), StunError> {
    match msg
        .iter_attributes()
        .map(|(_, attr)| attr.get_type())
        .find(|t| t.comprehension_required() && !known.contains(t))
    {
        Some(t) => Err(StunError::UnknownAttribute(t.value())),
        None => Ok(()),
    }
}

fn unexpected(msg: &Message<'_>) -> StunError {
    StunError::Unexpected {
        method: msg.method().value(),
        class: match msg.class() {
            MessageClass::Request => "request",
            MessageClass::Indication => "indication",
            MessageClass::Success => "success response",
            MessageClass::Error => "error response",
        },
    }
}

fn codec_txid(txid: TransactionId) -> CodecTransactionId {
    let mut wide = [0; 16];
    wide[4..].copy_from_slice(&txid);
    u128::from_be_bytes(wide).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    const TXID: TransactionId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.2: a Binding success response for 192.0.2.1:32853 with SOFTWARE,
    /// MESSAGE-INTEGRITY and FINGERPRINT.
    #[rustfmt::skip]
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42,
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
        0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: the same for [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    #[rustfmt::skip]
    const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42,
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
        0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
        0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1,
        0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41,
        0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
    ];

    /// RFC 5769 §2.1: an ICE connectivity check (PRIORITY, ICE-CONTROLLED, USERNAME,
    /// MESSAGE-INTEGRITY, FINGERPRINT).
    #[rustfmt::skip]
    const RFC5769_ICE_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42,
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
        0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74,
        0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
        0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20,
        0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56,
        0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2,
        0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    fn v4() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(100, 64, 0, 2), 40000))
    }

    fn v6() -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(
            "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            443,
            0,
            0,
        ))
    }

    /// A Binding message of `class` (type bits) with `attrs` appended, length set.
    fn message(mtype: u16, txid: TransactionId, attrs: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&mtype.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&txid);
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn binding_request_is_a_bare_header_with_the_given_txid() {
        let req = binding_request(TXID);
        assert_eq!(req.len(), HEADER_LEN);
        assert_eq!(req[..8], [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(req[8..], TXID);
        assert!(looks_like_stun(&req));
        assert_eq!(parse_binding_request(&req).unwrap().transaction_id(), TXID);
    }

    #[test]
    fn rfc5769_responses_parse_to_their_addresses() {
        assert_eq!(
            parse_binding_response(&RFC5769_IPV4_RESPONSE, &TXID),
            Ok("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(
            parse_binding_response(&RFC5769_IPV6_RESPONSE, &TXID),
            Ok("[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap())
        );
    }

    #[test]
    fn response_for_another_transaction_is_refused() {
        let mut other = TXID;
        other[11] ^= 1;
        assert_eq!(
            parse_binding_response(&RFC5769_IPV4_RESPONSE, &other),
            Err(StunError::WrongTransaction)
        );
    }

    #[test]
    fn response_with_a_bad_fingerprint_is_malformed() {
        let mut bad = RFC5769_IPV4_RESPONSE;
        bad[79] ^= 1;
        assert!(matches!(
            parse_binding_response(&bad, &TXID),
            Err(StunError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_and_padded_responses_are_refused() {
        for n in 0..RFC5769_IPV4_RESPONSE.len() {
            let r = parse_binding_response(&RFC5769_IPV4_RESPONSE[..n], &TXID);
            assert!(
                matches!(r, Err(StunError::Truncated { .. })),
                "{n} bytes: {r:?}"
            );
        }
        let mut long = RFC5769_IPV4_RESPONSE.to_vec();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_binding_response(&long, &TXID),
            Err(StunError::BadLength {
                declared: 60,
                actual: 64
            })
        );
    }

    #[test]
    fn bad_cookie_and_first_bits_are_not_stun() {
        let mut bad = RFC5769_IPV4_RESPONSE;
        bad[5] ^= 0xff;
        assert_eq!(parse_binding_response(&bad, &TXID), Err(StunError::NotStun));
        assert!(!looks_like_stun(&bad));
        let mut quic = RFC5769_IPV4_RESPONSE;
        quic[0] |= 0x40;
        assert_eq!(
            parse_binding_response(&quic, &TXID),
            Err(StunError::NotStun)
        );
        assert!(!looks_like_stun(&quic));
        assert!(!looks_like_stun(&RFC5769_IPV4_RESPONSE[..19]));
    }

    #[test]
    fn response_with_unknown_required_attribute_is_discarded() {
        let xor = BindingRequest { txid: TXID }.success_response(v4());
        let mut attrs = xor[HEADER_LEN..].to_vec();
        attrs.extend_from_slice(&[0x7f, 0x01, 0x00, 0x04, 1, 2, 3, 4]);
        let msg = message(0x0101, TXID, &attrs);
        assert_eq!(
            parse_binding_response(&msg, &TXID),
            Err(StunError::UnknownAttribute(0x7f01))
        );
        // The same attribute in the optional range is skipped.
        let last = attrs.len() - 8;
        attrs[last] = 0xff;
        let msg = message(0x0101, TXID, &attrs);
        assert_eq!(parse_binding_response(&msg, &TXID), Ok(v4()));
    }

    #[test]
    fn success_without_mapped_address_and_error_responses_are_typed() {
        assert_eq!(
            parse_binding_response(&message(0x0101, TXID, &[]), &TXID),
            Err(StunError::NoMappedAddress)
        );
        // ERROR-CODE 420 "Unknown": class 4, number 20.
        let err = message(
            0x0111,
            TXID,
            &[
                0x00, 0x09, 0x00, 0x0b, 0, 0, 4, 20, b'U', b'n', b'k', b'n', b'o', b'w', b'n', 0,
            ],
        );
        assert_eq!(
            parse_binding_response(&err, &TXID),
            Err(StunError::ErrorResponse {
                code: 420,
                reason: "Unknown".into()
            })
        );
        assert!(matches!(
            parse_binding_response(&binding_request(TXID), &TXID),
            Err(StunError::Unexpected {
                method: 1,
                class: "request"
            })
        ));
    }

    #[test]
    fn server_answers_with_the_source_address_only() {
        for source in [v4(), v6()] {
            let req = binding_request(TXID);
            let answer = answer_binding_request(&req, source).expect("answered");
            assert_eq!(parse_binding_response(&answer, &TXID), Ok(source));
            let msg = Message::from_bytes(&answer).unwrap();
            let types: Vec<u16> = msg
                .iter_attributes()
                .map(|(_, a)| a.get_type().value())
                .collect();
            assert_eq!(types, [0x0020]);
            assert!(answer.len() <= req.len() + MAX_RESPONSE_GROWTH);
        }
        assert_eq!(
            answer_binding_request(&binding_request(TXID), v6())
                .unwrap()
                .len(),
            HEADER_LEN + MAX_RESPONSE_GROWTH
        );
    }

    #[test]
    fn server_answers_a_request_with_optional_attributes() {
        // SOFTWARE "p2p", padded to four bytes.
        let req = message(0x0001, TXID, &[0x80, 0x22, 0x00, 0x03, b'p', b'2', b'p', 0]);
        assert_eq!(
            parse_binding_response(&answer_binding_request(&req, v4()).unwrap(), &TXID),
            Ok(v4())
        );
    }

    #[test]
    fn server_stays_silent_for_everything_else() {
        assert_eq!(
            parse_binding_request(&RFC5769_ICE_REQUEST),
            Err(StunError::UnknownAttribute(0x0024))
        );
        assert_eq!(answer_binding_request(&RFC5769_ICE_REQUEST, v4()), None);
        for silent in [
            &RFC5769_IPV4_RESPONSE[..],    // a response
            &message(0x0011, TXID, &[]),   // a Binding indication
            &message(0x0003, TXID, &[]),   // an Allocate request (TURN)
            &binding_request(TXID)[..19],  // truncated
            &[0xc0; 64][..],               // QUIC long header
            b"GET / HTTP/1.1\r\n\r\n\r\n", // anything else
        ] {
            assert_eq!(answer_binding_request(silent, v4()), None, "{silent:?}");
        }
    }

    fn request_with_attrs() -> impl Strategy<Value = Vec<u8>> {
        // Optional attributes of random types and contents, correctly padded.
        (
            any::<TransactionId>(),
            proptest::collection::vec(
                (
                    0x8000u16..=0xffff,
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..6,
            ),
        )
            .prop_filter_map(
                "no FINGERPRINT (its CRC would not match)",
                |(txid, attrs)| {
                    let mut body = Vec::new();
                    for (t, v) in attrs {
                        if t == 0x8028 {
                            return None;
                        }
                        body.extend_from_slice(&t.to_be_bytes());
                        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
                        body.extend_from_slice(&v);
                        body.resize(body.len().next_multiple_of(4), 0);
                    }
                    Some(message(0x0001, txid, &body))
                },
            )
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    proptest! {
        #[test]
        fn request_response_roundtrip(txid in any::<TransactionId>(), source in socket_addr()) {
            let req = binding_request(txid);
            let answer = answer_binding_request(&req, source).expect("answered");
            prop_assert_eq!(parse_binding_response(&answer, &txid), Ok(source));
            prop_assert!(answer.len() <= req.len() + MAX_RESPONSE_GROWTH);
        }

        #[test]
        fn requests_with_optional_attributes_are_answered_without_amplification(
            req in request_with_attrs(),
            source in socket_addr(),
        ) {
            let answer = answer_binding_request(&req, source).expect("answered");
            prop_assert!(answer.len() <= req.len() + MAX_RESPONSE_GROWTH);
            let mut txid = [0; 12];
            txid.copy_from_slice(&req[8..20]);
            prop_assert_eq!(parse_binding_response(&answer, &txid), Ok(source));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzz::stun(&data);
        }

        #[test]
        fn arbitrary_attributes_after_a_valid_header_never_panic(
            mtype in prop_oneof![Just(0x0001u16), Just(0x0101), Just(0x0111), any::<u16>()],
            attrs in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut attrs = attrs;
            attrs.truncate(attrs.len() / 4 * 4);
            crate::fuzz::stun(&message(mtype & 0x3fff, TXID, &attrs));
        }
    }
}
