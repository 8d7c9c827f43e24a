//! Encoding and decoding of v1 messages: JSON text control messages and binary data
//! messages (`seq` ‖ `chain` ‖ `payload`).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest WebSocket message any peer sends or accepts: 2 MiB.
pub const MAX_MESSAGE_LEN: usize = 2 * 1024 * 1024;
/// Size of a file piece: every data message carries one piece (the last may be shorter).
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Length of a data message header: 8-byte big-endian `seq` and 32-byte `chain`.
pub const DATA_HEADER_LEN: usize = 40;
/// Length of the AES-GCM tag appended to every encrypted item.
pub const TAG_LEN: usize = 16;

/// One WebSocket message, as the core sees it. The core knows nothing of any WebSocket
/// library: the runtime converts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// A text message: one JSON object.
    Text(String),
    /// A binary message: a data message.
    Binary(Bytes),
}

impl WireMessage {
    /// Length of the message payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            WireMessage::Text(t) => t.len(),
            WireMessage::Binary(b) => b.len(),
        }
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The role a client announces in `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The side that sends files.
    Sender,
    /// The side that receives files.
    Receiver,
}

impl Role {
    /// The other role.
    pub fn other(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }
}

/// Compression of a file's pieces, announced in `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Every piece is one complete zstd frame.
    Zstd,
    /// Pieces are sent as read.
    None,
}

fn compression_none() -> Compression {
    Compression::None
}

/// One entry of the sender's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// Size in bytes (0 for a [`EntryKind::Stream`], whose size is known only at its
    /// end).
    pub size: u64,
    /// Extensions [`EXT_STREAM`] and [`EXT_TEXT`]: what the entry is when it is not a
    /// plain file; absent for a plain file (and in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntryKind>,
}

impl ManifestEntry {
    /// A plain file's entry.
    pub fn file(path: impl Into<String>, size: u64) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            size,
            kind: None,
        }
    }
}

/// What a manifest entry is when it is not a plain file (extensions [`EXT_STREAM`] and
/// [`EXT_TEXT`]). A sender lists such an entry only together with the offer of its
/// extension, and sends its data only after the receiver accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Data of unknown length (a pipe): manifest and `file` say size 0, the data ends
    /// with [`Control::StreamEof`], which gives the size.
    Stream,
    /// A short text (at most [`TEXT_MAX`] bytes of UTF-8) that the receiver shows
    /// instead of writing a file.
    Text,
}

impl EntryKind {
    /// The extension that carries this kind of entry.
    pub fn extension(self) -> &'static str {
        match self {
            EntryKind::Stream => EXT_STREAM,
            EntryKind::Text => EXT_TEXT,
        }
    }
}

/// The extension by which a sender sends data of unknown length (its standard input):
/// an entry of kind [`EntryKind::Stream`] whose data ends with [`Control::StreamEof`].
pub const EXT_STREAM: &str = "stream";

/// The extension by which a sender sends a short text that the receiver shows instead
/// of writing a file: an entry of kind [`EntryKind::Text`].
pub const EXT_TEXT: &str = "text";

/// The longest text an entry of kind [`EntryKind::Text`] may hold: 64 KiB.
pub const TEXT_MAX: u64 = 64 * 1024;

/// One entry of the receiver's resume answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeEntry {
    /// Relative `/`-separated path, as in the manifest.
    pub path: String,
    /// Bytes the receiver already has.
    pub size: u64,
    /// Lowercase hex of the resume chain over those bytes.
    pub chain_hex: String,
}

/// The contents of a `file` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Relative `/`-separated path.
    pub path: String,
    /// The whole file's size, even when appending.
    pub size: u64,
    /// How the pieces are compressed.
    #[serde(default = "compression_none")]
    pub compression: Compression,
    /// Offset the data starts at; the receiver appends after this many bytes.
    #[serde(default)]
    pub append_from: u64,
    /// Extension [`EXT_FAST`]: this file's pieces travel on the fast data path (`"fast":
    /// true`); absent (false) in v1. Sent only once the receiver accepted the extension.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fast: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A v1 control message (a JSON object with a `type` key).
///
/// Serialises compactly with keys in the reference order; parses any key order and
/// whitespace and ignores unknown keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First message of every client to the relay.
    Hello {
        /// Lowercase hex of the code hash.
        code_hash_hex: String,
        /// The client's role.
        role: Role,
    },
    /// Relay to sender: a receiver is paired.
    Ready,
    /// Sender's list of files.
    Manifest {
        /// Whether the sender asks for a resume answer.
        #[serde(default)]
        resume: bool,
        /// The files.
        #[serde(default)]
        entries: Vec<ManifestEntry>,
        /// Extensions the sender offers (see [`EXT_CONFIRM`]); absent in v1 and when
        /// none is offered, and ignored by p2p-copy 0.1.x receivers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extensions: Vec<String>,
        /// Extension [`EXT_RECONNECT`]: the session's ticket (first session) or the
        /// sender's proof (a reconnect); absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconnect: Option<ReconnectOffer>,
        /// Extension [`EXT_PARTS`]: the manifest continues in [`Control::ManifestMore`]
        /// messages; absent when `entries` is the whole manifest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parts: Option<PartsOffer>,
    },
    /// Encrypted manifest.
    EncManifest {
        /// Hex of the 32-byte nonce seed.
        nonce: String,
        /// Hex of the sealed manifest JSON.
        hidden_manifest: String,
    },
    /// Receiver's resume answer.
    ReceiverManifest {
        /// Files the receiver already has (partly).
        #[serde(default)]
        entries: Vec<ResumeEntry>,
    },
    /// Encrypted resume answer.
    EncReceiverManifest {
        /// Hex of the sealed resume answer JSON.
        hidden_manifest: String,
    },
    /// Start of a file.
    File(FileHeader),
    /// Encrypted start of a file.
    EncFile {
        /// Hex of the sealed `file` JSON.
        hidden_file: String,
    },
    /// End of a file's data.
    FileEof,
    /// End of the session.
    Eof,
    /// Extension [`EXT_STREAM`]: the end of a stream's data, in place of `file_eof`,
    /// with the number of bytes it held: in clear (`size`) or, when encrypting, sealed
    /// under the next nonce of the session's chain (`hidden_size`, the decimal size).
    StreamEof {
        /// The stream's length in bytes (plain sessions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// Hex of the sealed decimal length (encrypted sessions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hidden_size: Option<String>,
    },
    /// Extension: the receiver accepts extensions the sender offered in its manifest.
    /// Sent only to a sender that offered them, before anything else the receiver sends.
    Extensions {
        /// The accepted extension names.
        #[serde(default)]
        accept: Vec<String>,
    },
    /// Extension [`EXT_RECONNECT`], from the receiver on a reconnect, right after
    /// [`Control::Extensions`]: its proof over the sender's nonce.
    ReconnectProof {
        /// Lowercase hex of the 32-byte proof.
        proof: String,
    },
    /// Extension [`EXT_RECONNECT`], from the sender: its receiver's report arrived. A
    /// receiver that agreed on reconnect waits for it after its report; a connection
    /// lost before it came makes that receiver reconnect, so that the sender learns
    /// from the reconnected session that every file is in place.
    ReportReceived,
    /// Extension [`EXT_CONFIRM`]: the sender gives up the current file (it changed or
    /// could not be read); the receiver keeps nothing of it under its final name.
    FileAbort {
        /// Nonces of the session's chain the sender used for pieces that never left
        /// (0 without encryption): the receiver skips as many.
        #[serde(default)]
        skipped_nonces: u64,
        /// Why, in a word (`changed`, `unreadable`).
        #[serde(default)]
        why: String,
    },
    /// Extension [`EXT_CONSENT`], from the receiver: whether it accepts the transfer the
    /// manifest describes. The sender sends no file data after the acceptance of
    /// [`EXT_CONSENT`] until this arrives.
    Consent {
        /// True: go on; false: the receiver declined, the session ends.
        accept: bool,
    },
    /// Extension [`EXT_METADATA`], from the sender after `eof`: one part of the files'
    /// modes and times and of the tree's directories.
    Metadata(MetadataPart),
    /// Encrypted [`Control::Metadata`].
    EncMetadata {
        /// The part's number, in clear because it selects the nonce.
        part: u32,
        /// Hex of the sealed `metadata` JSON.
        hidden_metadata: String,
    },
    /// Extension [`EXT_CONFIRM`]: how the session ended on the side that sends it.
    Report(Report),
    /// Encrypted [`Control::Report`].
    EncReport {
        /// Hex of the sealed `report` JSON.
        hidden_report: String,
    },
    /// Extension [`EXT_DIRECT`]: the addresses at which the side that sends it can be
    /// reached directly, and its certificate's fingerprint.
    Candidates(CandidateList),
    /// Encrypted [`Control::Candidates`].
    EncCandidates {
        /// The attempt, in clear because it selects the nonce.
        attempt: u32,
        /// Hex of the sealed `candidates` JSON.
        hidden_candidates: String,
    },
    /// Extension [`EXT_DIRECT`]: from the receiver, it holds a verified direct path and
    /// will read from it; from the sender, the last message on the relay before the
    /// session continues on the direct path.
    DirectReady {
        /// The attempt.
        attempt: u32,
    },
    /// Extension [`EXT_DIRECT`]: the side that sends it gives the attempt up; the
    /// session stays on the relay.
    DirectFailed {
        /// The attempt.
        attempt: u32,
        /// Why, in a word (`timeout`).
        #[serde(default)]
        why: String,
    },
    /// Extension [`EXT_DIRECT`], on the direct path from the receiver: it has taken this
    /// many of the session's messages from the direct path, so the sender may forget
    /// them (see [`crate::handover`]).
    DirectAck {
        /// Session messages taken from the direct path so far.
        received: u64,
    },
    /// Extension [`EXT_DIRECT`], on the relay from the sender: the direct path failed
    /// after the switch; the session continues on the relay once the receiver says how
    /// much it took from the direct path.
    DirectLost {
        /// The attempt.
        attempt: u32,
    },
    /// Extension [`EXT_PARTS`], from the sender after the acceptance: more entries of
    /// the manifest.
    ManifestMore(Part<ManifestEntry>),
    /// Extension [`EXT_PARTS`], from the receiver before its [`Control::ReceiverManifest`]:
    /// more entries of the resume answer.
    ReceiverManifestMore(Part<ResumeEntry>),
    /// Extension [`EXT_PARTS`], from the receiver before its [`Control::Report`]: more
    /// files that are not in place.
    ReportMore(Part<FailedFile>),
    /// Extension [`EXT_PARTS`], encrypted: one of the three parts above, sealed.
    EncPart {
        /// The part's number (1, 2, …), in clear because it selects the nonce.
        index: u64,
        /// Hex of the sealed part's JSON.
        hidden_part: String,
    },
    /// Extension [`EXT_DIRECT`], on the relay from the receiver, answering
    /// [`Control::DirectLost`]: it took this many session messages from the direct path
    /// and reads the rest from the relay.
    DirectResume {
        /// The attempt.
        attempt: u32,
        /// Session messages taken from the direct path.
        received: u64,
    },
}

/// The extension by which two peers of this project exchange candidate addresses over
/// the relay and move the session to a direct path (see [`crate::direct`]).
pub const EXT_DIRECT: &str = "direct";

/// The extension by which two peers of this project send lists that do not fit in one
/// 2 MiB message (the manifest, the resume answer, the report's failed files) in parts
/// (see [`crate::parts`]). Offered only with [`EXT_CONFIRM`], and only when a list may
/// not fit.
pub const EXT_PARTS: &str = "parts";

/// The manifest's `parts` value (extension [`EXT_PARTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsOffer {
    /// Entries of the whole manifest: those in the first message and those that follow
    /// in [`Control::ManifestMore`].
    pub total: u64,
}

/// One part of a list (extension [`EXT_PARTS`]): its number and its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part<T> {
    /// 1 for the first part after the list's head message, then 2, 3, …
    pub index: u64,
    /// The items.
    pub entries: Vec<T>,
}

/// The extension by which two peers of this project reconnect after a lost connection
/// and resume where the receiver stands (see [`crate::reconnect`]). Offered only with
/// [`EXT_CONFIRM`].
pub const EXT_RECONNECT: &str = "reconnect";

/// The manifest's `reconnect` value (extension [`EXT_RECONNECT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReconnectOffer {
    /// Hex of the 16-byte session id.
    pub session: String,
    /// First session: hex of the 32-byte secret of the ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A reconnect: its number (1, 2, …); 0 in the first session.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// A reconnect: hex of the sender's 16 fresh bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// A reconnect: hex of the sender's proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The contents of a [`Control::Candidates`] message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateList {
    /// The attempt these candidates belong to (1 in this version).
    pub attempt: u32,
    /// Lowercase hex of the SHA-256 of the sending side's QUIC certificate (DER).
    pub fingerprint: String,
    /// The addresses, most preferred first.
    pub candidates: Vec<CandidateEntry>,
}

/// One candidate address as it travels: kept as text so that a malformed address is
/// refused by the direct-path machine with a clear reason, not by the JSON parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateEntry {
    /// `ip:port`, with IPv6 in brackets (`[2001:db8::1]:4000`).
    pub addr: String,
    /// How the sending side learned the address.
    pub kind: CandidateKind,
}

/// How a candidate address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateKind {
    /// An address of one of the side's own interfaces.
    Host,
    /// Server-reflexive: the side's address as a STUN server saw it (its NAT's mapping).
    Srflx,
}

/// The extension by which two peers of this project move file data on the fast data
/// path: the BLAKE3 chain ([`ChainKind::Blake3`](crate::chain::ChainKind::Blake3)) and,
/// when encrypting, AES-256-GCM with 96-bit nonces under a key of the session's own
/// ([`FastCipher`](crate::crypto::FastCipher)). Offered only with [`EXT_CONFIRM`]; used
/// for each file whose header says `"fast":true`.
pub const EXT_FAST: &str = "fast";

/// The extension by which the receiver confirms delivery: it answers the offer with
/// [`Control::Extensions`] and ends the session with a [`Control::Report`] of what it
/// put in place; either side reports a failure before it closes.
pub const EXT_CONFIRM: &str = "confirm";

/// The extension by which the receiver asks its user before it accepts a transfer: it
/// accepts the offer with [`Control::Extensions`] (only together with [`EXT_CONFIRM`]),
/// and answers with [`Control::Consent`] once its user decided. Until then the sender
/// holds its file data and its deadlines.
pub const EXT_CONSENT: &str = "consent";

/// The extension by which the receiver keeps the sender's permission bits, modification
/// times and directories (see [`crate::metadata`]). Offered only with [`EXT_CONFIRM`];
/// once accepted, the sender sends [`Control::Metadata`] parts after `eof`.
pub const EXT_METADATA: &str = "metadata";

/// One part of the sender's metadata (extension [`EXT_METADATA`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataPart {
    /// 0 for the first part, then counting up by one.
    pub part: u32,
    /// Files of the manifest, by path, with their mode and time.
    #[serde(default)]
    pub files: Vec<MetaEntry>,
    /// Directories of the sent tree, by path, with their time; the receiver creates
    /// those that are missing (the empty ones).
    #[serde(default)]
    pub dirs: Vec<MetaEntry>,
    /// True on the last part.
    #[serde(default)]
    pub last: bool,
}

/// A path's metadata in a [`MetadataPart`]. Either value may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetaEntry {
    /// Relative `/`-separated path, as in the manifest.
    pub path: String,
    /// Unix permission bits (files only); the receiver applies `mode & 0o777`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time, whole seconds since the Unix epoch (negative before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
}

/// How a session ended, as one side reports it to the other (extension
/// [`EXT_CONFIRM`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    /// True when the session ran to its end (individual files may still have failed).
    #[serde(default)]
    pub ok: bool,
    /// Receiver: files under their final names at the end of the session (put in place
    /// now, or already complete there).
    #[serde(default)]
    pub delivered: u64,
    /// Receiver: files that are not in place, and why.
    #[serde(default)]
    pub failed: Vec<FailedFile>,
    /// Why the session failed, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file that did not arrive, in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedFile {
    /// Its path, as in the manifest.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl Control {
    /// The compact JSON text, as the reference produces it.
    pub fn to_json(&self) -> String {
        // Serialising these plain types cannot fail: no maps with non-string keys, no
        // custom serialisers.
        serde_json::to_string(self).expect("control messages always serialise")
    }

    /// Parse a control message from JSON text.
    ///
    /// # Errors
    /// [`Error::Peer`] when the text is not JSON, not an object, has an unknown `type`
    /// or lacks or mistypes a key.
    pub fn parse(text: &str) -> Result<Control, Error> {
        serde_json::from_str(text).map_err(|e| Error::peer(format!("bad control message: {e}")))
    }

    /// The `type` name, for messages and logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Control::Hello { .. } => "hello",
            Control::Ready => "ready",
            Control::Manifest { .. } => "manifest",
            Control::EncManifest { .. } => "enc_manifest",
            Control::ReceiverManifest { .. } => "receiver_manifest",
            Control::EncReceiverManifest { .. } => "enc_receiver_manifest",
            Control::File(_) => "file",
            Control::EncFile { .. } => "enc_file",
            Control::FileEof => "file_eof",
            Control::Eof => "eof",
            Control::StreamEof { .. } => "stream_eof",
            Control::Extensions { .. } => "extensions",
            Control::ReconnectProof { .. } => "reconnect_proof",
            Control::ReportReceived => "report_received",
            Control::FileAbort { .. } => "file_abort",
            Control::Consent { .. } => "consent",
            Control::Metadata(_) => "metadata",
            Control::EncMetadata { .. } => "enc_metadata",
            Control::Report(_) => "report",
            Control::EncReport { .. } => "enc_report",
            Control::Candidates(_) => "candidates",
            Control::EncCandidates { .. } => "enc_candidates",
            Control::DirectReady { .. } => "direct_ready",
            Control::DirectFailed { .. } => "direct_failed",
            Control::DirectAck { .. } => "direct_ack",
            Control::DirectLost { .. } => "direct_lost",
            Control::DirectResume { .. } => "direct_resume",
            Control::ManifestMore(_) => "manifest_more",
            Control::ReceiverManifestMore(_) => "receiver_manifest_more",
            Control::ReportMore(_) => "report_more",
            Control::EncPart { .. } => "enc_part",
        }
    }
}

impl From<Control> for WireMessage {
    fn from(c: Control) -> Self {
        WireMessage::Text(c.to_json())
    }
}

/// A decoded data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMessage {
    /// Index of the piece within the file, from 0.
    pub seq: u64,
    /// The chain value after this piece.
    pub chain: [u8; 32],
    /// The payload (a slice of the received message, not a copy).
    pub payload: Bytes,
}

impl DataMessage {
    /// Split a binary message into header and payload without copying.
    ///
    /// # Errors
    /// [`Error::Peer`] when the message is shorter than the 40-byte header.
    pub fn decode(mut frame: Bytes) -> Result<DataMessage, Error> {
        if frame.len() < DATA_HEADER_LEN {
            return Err(Error::peer(format!(
                "data message of {} bytes is shorter than its 40-byte header",
                frame.len()
            )));
        }
        let header = frame.split_to(DATA_HEADER_LEN);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&header[..8]);
        let mut chain = [0u8; 32];
        chain.copy_from_slice(&header[8..]);
        Ok(DataMessage {
            seq: u64::from_be_bytes(seq),
            chain,
            payload: frame,
        })
    }

    /// Encode header and payload into one buffer.
    pub fn encode(seq: u64, chain: &[u8; 32], payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(DATA_HEADER_LEN + payload.len());
        out.put_u64(seq);
        out.put_slice(chain);
        out.put_slice(payload);
        out.freeze()
    }
}

/// One piece of a file on its way to the connection: [`DATA_HEADER_LEN`] bytes of room
/// for the data-message header, then the payload.
///
/// The sender's runtime reads each piece straight into one ([`PieceBuf::zeroed`],
/// [`PieceBuf::payload_mut`]); without compression or encryption the same buffer
/// becomes the message, so a piece goes from the file to the connection without a copy.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PieceBuf {
    buf: Vec<u8>,
}

impl PieceBuf {
    /// A zeroed payload of `len` bytes, with room for the header in front.
    pub fn zeroed(len: usize) -> PieceBuf {
        PieceBuf {
            buf: vec![0; DATA_HEADER_LEN + len],
        }
    }

    /// A buffer whose first [`DATA_HEADER_LEN`] bytes are the header room and the rest
    /// the payload (a runtime that reads a piece into a buffer of its own).
    ///
    /// # Panics
    /// If `buf` is shorter than the header room.
    pub fn from_frame(buf: Vec<u8>) -> PieceBuf {
        assert!(
            buf.len() >= DATA_HEADER_LEN,
            "a piece buffer holds its header room"
        );
        PieceBuf { buf }
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[DATA_HEADER_LEN..]
    }

    /// The payload, to fill.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[DATA_HEADER_LEN..]
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.buf.len() - DATA_HEADER_LEN
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the first `len` bytes of the payload (after a short read).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(DATA_HEADER_LEN + len);
    }

    /// The buffer with its header room, for [`write_header`].
    pub(crate) fn into_frame(self) -> Vec<u8> {
        self.buf
    }
}

impl From<&[u8]> for PieceBuf {
    /// Copy a payload into a new buffer.
    fn from(payload: &[u8]) -> PieceBuf {
        let mut buf = Vec::with_capacity(DATA_HEADER_LEN + payload.len());
        buf.resize(DATA_HEADER_LEN, 0);
        buf.extend_from_slice(payload);
        PieceBuf { buf }
    }
}

impl From<Vec<u8>> for PieceBuf {
    /// Copy a payload into a new buffer.
    fn from(payload: Vec<u8>) -> PieceBuf {
        PieceBuf::from(payload.as_slice())
    }
}

impl AsRef<[u8]> for PieceBuf {
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

impl std::fmt::Debug for PieceBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceBuf")
            .field("len", &self.len())
            .finish()
    }
}

/// Write a data header into the first 40 bytes of a frame that was built with room for
/// it (see [`crate::sender::Job`]).
pub(crate) fn write_header(frame: &mut [u8], seq: u64, chain: &[u8; 32]) {
    frame[..8].copy_from_slice(&seq.to_be_bytes());
    frame[8..DATA_HEADER_LEN].copy_from_slice(chain);
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parse hex (either case). `None` on odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Parse exactly 32 bytes of hex.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_serialise_like_the_reference() {
        let m = Control::Manifest {
            resume: false,
            extensions: Vec::new(),
            reconnect: None,
            parts: None,
            entries: vec![ManifestEntry {
                path: "dir/ä.txt".into(),
                size: 12,
                kind: None,
            }],
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"manifest","resume":false,"entries":[{"path":"dir/ä.txt","size":12}]}"#
        );
        let f = Control::File(FileHeader {
            path: "a".into(),
            size: 3,
            compression: Compression::Zstd,
            append_from: 0,
            fast: false,
        });
        assert_eq!(
            f.to_json(),
            r#"{"type":"file","path":"a","size":3,"compression":"zstd","append_from":0}"#
        );
        assert_eq!(Control::Eof.to_json(), r#"{"type":"eof"}"#);
    }

    #[test]
    fn parse_accepts_any_order_whitespace_and_unknown_keys() {
        let c = Control::parse(r#" { "size" : 5, "x": [1], "path":"p", "type":"file" } "#).unwrap();
        assert_eq!(
            c,
            Control::File(FileHeader {
                path: "p".into(),
                size: 5,
                compression: Compression::None,
                append_from: 0,
                fast: false,
            })
        );
    }

    #[test]
    fn parse_refuses_bad_messages() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"type":"nope"}"#,
            r#"{"type":"file","path":"a"}"#,
            r#"{"type":"file","path":"a","size":-1}"#,
            r#"{"type":"file","path":"a","size":1,"compression":"gzip"}"#,
            r#"{"type":"hello","code_hash_hex":"x","role":"boss"}"#,
        ] {
            assert!(
                matches!(Control::parse(bad), Err(Error::Peer { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_message_round_trips_and_refuses_short_frames() {
        let frame = DataMessage::encode(7, &[9; 32], b"payload");
        let d = DataMessage::decode(frame).unwrap();
        assert_eq!(
            (d.seq, d.chain, &d.payload[..]),
            (7, [9; 32], &b"payload"[..])
        );
        assert!(DataMessage::decode(Bytes::from_static(&[0; 39])).is_err());
        assert!(DataMessage::decode(Bytes::from_static(&[0; 40])).is_ok());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000FfF"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
