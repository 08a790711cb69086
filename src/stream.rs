//! Framing and sealing of one TCP stream. Each side of a sealed stream first
//! sends a [`StreamHello`] (key id and a fresh salt) in the clear; both then
//! derive per-connection keys from the keyring key and both salts, and every
//! frame is `length | ChaCha20-Poly1305(body)` with counter nonces, so a
//! replayed, reordered or tampered frame fails. A plaintext stream starts
//! directly with a frame; the responder tells them apart by the first two
//! bytes (a hello's magic read as a length would exceed any frame limit).
//! After the hellos each side proves it holds the key with an empty sealed
//! frame (key confirmation) before any other frame is read.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Encryption;
use crate::crypto::{self, KeyId, Keyring, OpenError, Role, StreamCipher, StreamHello};
use crate::wire;

/// How long the hello exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Magic of a refusal sent in place of a hello.
const REJECT_MAGIC: [u8; 2] = *b"TR";
// Refusal reason 1 (the responder does not hold the initiator's key,
// without proof) is what earlier versions send: read as unproven.
/// Refusal reason: the responder has no keyring at all.
const REJECT_NO_KEYRING: u8 = 2;
/// Refusal reason: the responder does not hold the initiator's key, and
/// proves which keys it holds: `count (1)` then, per key (its primary
/// first), `key id (4, BE) | tag (16)`, the tag an empty frame sealed with
/// a session derived from that key and the initiator's fresh salt. An
/// initiator holding one of them learns, beyond doubt and not from a
/// replay, a key this peer takes; a refusal without proof (anyone can send
/// four bytes) only says the peer refused.
const REJECT_UNKNOWN_KEY_PROVEN: u8 = 3;
/// Bound into a refusal's proofs, apart from every stream's keys.
const REFUSAL_LABEL: &[u8] = b"refusal ";
/// Bytes of one key's proof in a refusal.
const PROOF_LEN: usize = 4 + crypto::TAG_LEN;

/// The tag proving `key` to the initiator that sent `salt`.
fn refusal_tag(key: &crypto::SecretKey, salt: &[u8; 32], label: &str) -> Option<[u8; crypto::TAG_LEN]> {
    let info = [REFUSAL_LABEL, label.as_bytes()].concat();
    let mut cipher = StreamCipher::new(key, Role::Responder, salt, &[0u8; 32], &info);
    cipher.seal_in_place(&mut []).ok()
}

/// A refusal of the initiator's key, with the proofs of the keys `ring`
/// holds (its primary first).
fn proven_refusal(ring: &Keyring, salt: &[u8; 32], label: &str) -> Vec<u8> {
    let primary = ring.primary_id();
    let mut keys: Vec<&crypto::SecretKey> = ring.keys().iter().collect();
    keys.sort_by_key(|k| k.id() != primary);
    keys.truncate(crypto::MAX_KEYS);
    let mut out = vec![REJECT_MAGIC[0], REJECT_MAGIC[1], 1, REJECT_UNKNOWN_KEY_PROVEN];
    let proofs: Vec<(KeyId, [u8; crypto::TAG_LEN])> = keys
        .into_iter()
        .filter_map(|k| refusal_tag(k, salt, label).map(|t| (k.id(), t)))
        .collect();
    out.push(proofs.len() as u8);
    for (id, tag) in proofs {
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&tag);
    }
    out
}

/// The first key of a refusal's proofs that `ring` holds and whose tag is
/// right, if any.
fn proven_key(ring: &Keyring, proofs: &[u8], salt: &[u8; 32], label: &str) -> Option<KeyId> {
    proofs.chunks_exact(PROOF_LEN).find_map(|proof| {
        let (id, tag) = proof.split_at(4);
        let id = KeyId(u32::from_be_bytes(id.try_into().ok()?));
        let key = ring.get(id)?;
        let expected = refusal_tag(key, salt, label)?;
        // Constant time: the tag is a secret-derived value.
        bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)).then_some(id)
    })
}

/// What a stream needs to know about encryption, taken when it opens.
#[derive(Clone, Debug)]
pub struct Security {
    /// Keys, if encryption is configured.
    pub keyring: Option<Keyring>,
    /// How strictly to apply them.
    pub encryption: Encryption,
    /// Cluster label (bound into the per-connection keys).
    pub label: String,
}

impl Security {
    #[cfg(feature = "internals")] // the simulator's and the tests'
    /// Plaintext streams.
    pub fn plaintext(label: &str) -> Security {
        Security {
            keyring: None,
            encryption: Encryption::Accept,
            label: label.to_string(),
        }
    }

    fn seals(&self) -> Option<&Keyring> {
        self.keyring
            .as_ref()
            .filter(|_| self.encryption != Encryption::Accept)
    }

    /// Whether this node dials sealed streams.
    pub(crate) fn dials_sealed(&self) -> bool {
        self.seals().is_some()
    }

    /// Whether this node takes sealed streams only.
    pub(crate) fn requires_sealed(&self) -> bool {
        self.keyring.is_some() && self.encryption == Encryption::Require
    }
}

/// Why a stream was refused or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A plaintext stream while encryption is required.
    #[error("plaintext stream refused: encryption is required")]
    Plaintext,
    /// The peer sealed with a key this node does not hold.
    #[error("the peer uses key {0}, which this node does not hold")]
    UnknownKey(KeyId),
    /// The peer sealed while this node has no keyring.
    #[error("the peer seals its traffic but this node has no key")]
    NoKeyring,
    /// The peer refused this node's key; with the id of a key the peer
    /// proved it holds and this node holds too, if it did.
    #[error("the peer does not hold this node's key {rejected}{}: the two were given different keys (check the key files), the peer runs without a key (plaintext), or one of the two is behind a key rotation (a node that missed it needs a current key; a key made primary before it reached every node cuts the others off)", proven_note(.proven))]
    KeyRejected {
        /// This node's key, refused.
        rejected: KeyId,
        /// A key the peer proved it holds, which this node holds too.
        proven: Option<KeyId>,
    },
    /// The peer answered a sealed hello in plaintext or not at all.
    #[error("the peer does not speak sealed streams: it runs without a key, or it is no tribe node (is the address its gossip port, not its admin port?)")]
    PeerNotSealing,
    /// A frame failed authentication (tampered, replayed, reordered, or
    /// another cluster's label).
    #[error("a frame failed authentication: the peer runs with another cluster label, or the frame was tampered with, replayed or reordered")]
    Auth,
    /// The peer did not finish setting the stream up in time.
    #[error("the peer did not finish the stream setup in time")]
    Stalled,
    /// The peer's setup was pushed out for a newer connection: every place
    /// was taken and its host had the most setups under way.
    #[error("the peer's unfinished setup made way for a newer connection (every place was taken, most of them by its host or network)")]
    MadeWay,
}

fn proven_note(proven: &Option<KeyId>) -> String {
    match proven {
        Some(k) => format!(" (it proved it holds key {k}, which this node held too when the stream opened)"),
        None => " (and proved no key this node holds)".into(),
    }
}

/// Why a stream ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Socket error or timeout.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame over the size limit.
    #[error("bad frame: {0}")]
    BadFrame(wire::WireError),
    /// Refused for a security reason.
    #[error("{0}")]
    Refused(Refusal),
}

/// Whether a stream ended because its peer closed or reset it (a frame
/// cut off by the close included), not for a fault of what it sent.
pub fn caller_went_away(e: &StreamError) -> bool {
    matches!(e, StreamError::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
    ))
}

/// A frame buffer that grew past this is dropped after use rather than
/// kept for the stream's life: a rare large frame does not pin its memory.
const KEEP_CAPACITY: usize = 256 * 1024;
/// A frame body is read in steps of at least this, growing with the bytes
/// that arrived, so a length prefix alone never allocates its length.
const READ_STEP: usize = 64 * 1024;
/// Least bytes asked of the socket per read: small frames arrive several
/// to a read, as through a `BufReader`.
const SMALL_READ: usize = 16 * 1024;

/// The sending half's state: the cipher, and one frame buffer reused for
/// every frame (`length | body | tag`, sealed in place).
pub struct Sealer {
    cipher: Option<StreamCipher>,
    buf: Vec<u8>,
}

/// The receiving half's state: the cipher, and the bytes read from the
/// socket and not yet handed out. The opener reads the socket itself (no
/// `BufReader` in front): a large frame lands once, in the buffer it is
/// opened and lent from, instead of being copied there from a read buffer.
/// All progress lives here, so a read that is dropped half-way (a `select!`
/// that took another branch) loses no bytes; the next call resumes it.
pub struct Opener {
    cipher: Option<StreamCipher>,
    max_frame: usize,
    /// Bytes read: frames back to back from `start`; `buf[..start]` was
    /// handed out already.
    buf: Vec<u8>,
    start: usize,
    /// End of the frame lent by the last call, consumed at the next one.
    lent: Option<usize>,
}

fn derive_pair(
    key: &crypto::SecretKey,
    role: Role,
    initiator: &StreamHello,
    responder: &StreamHello,
    label: &str,
) -> (StreamCipher, StreamCipher) {
    // Each half keeps its own copy; one only seals, the other only opens.
    let make = || {
        StreamCipher::new(
            key,
            role,
            &initiator.salt,
            &responder.salt,
            label.as_bytes(),
        )
    };
    (make(), make())
}

/// The opening side of a stream: sends a hello when sealing and waits for
/// the peer's.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
    max_frame: usize,
) -> Result<(Sealer, Opener), StreamError> {
    connect_sealed_with(stream, security, None, max_frame).await
}

/// [`connect`], sealed with `key` of this node's ring rather than its
/// primary: a key a peer that refused the primary proved it holds. A
/// responder takes any key of its ring, so this opens nothing it would not.
pub async fn connect_with_key<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
    key: KeyId,
    max_frame: usize,
) -> Result<(Sealer, Opener), StreamError> {
    connect_sealed_with(stream, security, Some(key), max_frame).await
}

async fn connect_sealed_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
    with: Option<KeyId>,
    max_frame: usize,
) -> Result<(Sealer, Opener), StreamError> {
    let Some(ring) = security.seals() else {
        return Ok(halves(None, None, max_frame));
    };
    let key = match with {
        None => ring.primary().clone(),
        Some(id) => ring
            .get(id)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("key {id} is not held any more")))?,
    };
    let mine = StreamHello::new(key.id());
    let exchange = async {
        stream.write_all(&mine.encode()).await?;
        let mut magic = [0u8; 2];
        stream.read_exact(&mut magic).await?;
        if magic == REJECT_MAGIC {
            let mut rest = [0u8; 2];
            stream.read_exact(&mut rest).await?;
            let mut proven = None;
            if rest == [1, REJECT_UNKNOWN_KEY_PROVEN] {
                let mut count = [0u8; 1];
                stream.read_exact(&mut count).await?;
                let count = usize::from(count[0]).min(crypto::MAX_KEYS);
                let mut proofs = vec![0u8; count * PROOF_LEN];
                stream.read_exact(&mut proofs).await?;
                proven = proven_key(ring, &proofs, &mine.salt, &security.label);
            }
            return Err(StreamError::Refused(Refusal::KeyRejected {
                rejected: mine.key_id,
                proven,
            }));
        }
        let mut hello = [0u8; crypto::HELLO_LEN];
        hello[..2].copy_from_slice(&magic);
        stream.read_exact(&mut hello[2..]).await?;
        let theirs = StreamHello::decode(&hello)
            .map_err(|_| StreamError::Refused(Refusal::PeerNotSealing))?;
        if theirs.key_id != mine.key_id {
            return Err(StreamError::Refused(Refusal::Auth));
        }
        Ok(theirs)
    };
    let theirs = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let pair = derive_pair(&key, Role::Initiator, &mine, &theirs, &security.label);
    let (mut sealer, mut opener) = halves(Some(pair), None, max_frame);
    confirm_key(stream, &mut sealer, &mut opener).await?;
    Ok((sealer, opener))
}

/// Key confirmation: right after the hellos each side sends an empty sealed
/// frame and reads the peer's, allowing it no body, before any other frame.
/// A peer without the key is dropped after 20 bytes, before it can make
/// this node buffer a frame. Both sides write before they read, so it adds
/// no round trip.
async fn confirm_key<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sealer: &mut Sealer,
    opener: &mut Opener,
) -> Result<(), StreamError> {
    let exchange = async {
        sealer.write_frame(stream, &[]).await?;
        let limit = std::mem::replace(&mut opener.max_frame, 0);
        let got = opener
            .next_frame(stream)
            .await
            .map(|frame| frame.map(<[u8]>::is_empty));
        opener.max_frame = limit;
        match got {
            Ok(Some(true)) => Ok(()),
            // A peer with the key sends exactly an empty sealed frame: any
            // other header or body is one without it, an authentication
            // failure rather than a malformed frame.
            Ok(Some(false)) | Err(StreamError::BadFrame(_)) => {
                Err(StreamError::Refused(Refusal::Auth))
            }
            Ok(None) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "key confirmation timed out")
        })?
}

/// The two halves of a stream, sealed with `pair` (send, receive) or plain.
fn halves(
    pair: Option<(StreamCipher, StreamCipher)>,
    pending_header: Option<[u8; wire::FRAME_HEADER]>,
    max_frame: usize,
) -> (Sealer, Opener) {
    let (send, recv) = match pair {
        Some((s, r)) => (Some(s), Some(r)),
        None => (None, None),
    };
    (
        Sealer {
            cipher: send,
            buf: Vec::new(),
        },
        Opener {
            cipher: recv,
            max_frame,
            buf: pending_header.map(Vec::from).unwrap_or_default(),
            start: 0,
            lent: None,
        },
    )
}

/// The accepting side: reads the first bytes, and either answers a hello or
/// treats the stream as plaintext (when allowed).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
    max_frame: usize,
) -> Result<(Sealer, Opener), StreamError> {
    let exchange = async {
        let mut first = [0u8; wire::FRAME_HEADER];
        stream.read_exact(&mut first).await?;
        if first[..2] != crypto::HELLO_MAGIC {
            // No hello, and not the channel frame (one byte) a plaintext
            // stream begins with: not a tribe node (an HTTP or TLS client,
            // a port scanner) to blame on encryption.
            if u32::from_be_bytes(first) != 1 {
                return Err(StreamError::BadFrame(wire::WireError::Malformed(
                    "not a tribe stream: its first bytes are neither a hello nor a channel \
                     frame (an HTTP or TLS client, or a port scanner, at the gossip port?)"
                        .into(),
                )));
            }
            if security.requires_sealed() {
                return Err(StreamError::Refused(Refusal::Plaintext));
            }
            return Ok((None, Some(first)));
        }
        let mut hello = [0u8; crypto::HELLO_LEN];
        hello[..first.len()].copy_from_slice(&first);
        stream.read_exact(&mut hello[first.len()..]).await?;
        let theirs = StreamHello::decode(&hello).map_err(|_| {
            StreamError::BadFrame(wire::WireError::Malformed("bad stream hello".into()))
        })?;
        let Some(ring) = security.keyring.as_ref() else {
            let _ = stream
                .write_all(&[REJECT_MAGIC[0], REJECT_MAGIC[1], 1, REJECT_NO_KEYRING])
                .await;
            return Err(StreamError::Refused(Refusal::NoKeyring));
        };
        let Some(key) = ring.get(theirs.key_id).cloned() else {
            let _ = stream
                .write_all(&proven_refusal(ring, &theirs.salt, &security.label))
                .await;
            return Err(StreamError::Refused(Refusal::UnknownKey(theirs.key_id)));
        };
        let mine = StreamHello::new(theirs.key_id);
        stream.write_all(&mine.encode()).await?;
        Ok((Some((key, theirs, mine)), None))
    };
    let (sealed, pending_header) = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let pair = sealed.map(|(key, theirs, mine)| {
        derive_pair(&key, Role::Responder, &theirs, &mine, &security.label)
    });
    let sealed = pair.is_some();
    let (mut sealer, mut opener) = halves(pair, pending_header, max_frame);
    if sealed {
        confirm_key(stream, &mut sealer, &mut opener).await?;
    }
    Ok((sealer, opener))
}

impl Sealer {
    /// A sealer of plaintext frames, for tests of what writes frames.
    #[cfg(test)]
    pub(crate) fn plaintext_for_tests() -> Sealer {
        Sealer {
            cipher: None,
            buf: Vec::new(),
        }
    }

    /// Both halves of a plaintext stream, for tests of what holds streams.
    #[cfg(test)]
    pub(crate) fn plaintext_pair_for_tests() -> (Sealer, Opener) {
        halves(None, None, 1 << 20)
    }

    /// Writes one frame (sealed when the stream is).
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        body: &[u8],
    ) -> Result<(), StreamError> {
        self.buf.clear();
        // Room for the tag too, so sealing never moves the frame.
        self.buf
            .reserve(wire::FRAME_HEADER + body.len() + self.tag_len());
        self.buf.extend_from_slice(&[0; wire::FRAME_HEADER]);
        self.buf.extend_from_slice(body);
        self.finish_and_write(writer).await
    }

    /// Encodes `msg` (postcard) straight into the frame buffer and writes
    /// it as one frame: no copy of the message's bytes besides the encoding.
    pub async fn write_msg<W: AsyncWrite + Unpin, T: serde::Serialize>(
        &mut self,
        writer: &mut W,
        msg: &T,
    ) -> Result<(), StreamError> {
        self.seal_msg(msg)?;
        self.write_sealed(writer).await
    }

    /// Bytes a frame of this stream carries after its body (the tag).
    pub fn tag_len(&self) -> usize {
        if self.cipher.is_some() {
            crypto::TAG_LEN
        } else {
            0
        }
    }

    /// Encodes `msg` as one frame not yet sealed: `length | body | room
    /// for a tag of tag_len bytes`, for [`Sealer::seal_frames`] to seal in
    /// place later. Needs no sealer, so a sender encodes without holding
    /// the stream's order.
    pub fn encode_frame<T: serde::Serialize>(
        msg: &T,
        tag_len: usize,
    ) -> Result<Vec<u8>, StreamError> {
        let head = vec![0; wire::FRAME_HEADER];
        let mut frame = wire::encode_append(msg, head, tag_len).map_err(StreamError::BadFrame)?;
        frame.resize(frame.len() + tag_len, 0);
        let len = frame.len() - wire::FRAME_HEADER;
        let prefix = u32::try_from(len)
            .map_err(|_| StreamError::BadFrame(wire::WireError::Oversized(len)))?;
        frame[..wire::FRAME_HEADER].copy_from_slice(&prefix.to_be_bytes());
        Ok(frame)
    }

    /// Seals in place, in order, every frame of `frames` (frames from
    /// [`Sealer::encode_frame`] with this stream's `tag_len`, back to back).
    pub fn seal_frames(&mut self, frames: &mut [u8]) -> Result<(), StreamError> {
        let Some(cipher) = &mut self.cipher else {
            return Ok(());
        };
        let bad = || StreamError::BadFrame(wire::WireError::Malformed("frame layout".into()));
        let mut at = 0;
        while at < frames.len() {
            let head: [u8; wire::FRAME_HEADER] = frames
                .get(at..at + wire::FRAME_HEADER)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(bad)?;
            let len = u32::from_be_bytes(head) as usize;
            let end = at + wire::FRAME_HEADER + len;
            let frame = frames
                .get_mut(at + wire::FRAME_HEADER..end)
                .ok_or_else(bad)?;
            let body_len = len.checked_sub(crypto::TAG_LEN).ok_or_else(bad)?;
            let (body, tag_room) = frame.split_at_mut(body_len);
            let tag = cipher
                .seal_in_place(body)
                .map_err(|_| StreamError::Refused(Refusal::Auth))?;
            tag_room.copy_from_slice(&tag);
            at = end;
        }
        Ok(())
    }

    /// Leaves `msg` in the frame buffer as one finished frame.
    fn seal_msg<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), StreamError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; wire::FRAME_HEADER]);
        let room = self.tag_len();
        self.buf = wire::encode_append(msg, buf, room).map_err(StreamError::BadFrame)?;
        self.seal_buf()
    }

    /// Seals the body in `buf` in place (appending the tag), fills in the
    /// length prefix and writes the frame.
    async fn finish_and_write<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> Result<(), StreamError> {
        self.seal_buf()?;
        self.write_sealed(writer).await
    }

    /// Seals the body in `buf` in place (appending the tag) and fills in
    /// the length prefix.
    fn seal_buf(&mut self) -> Result<(), StreamError> {
        if let Some(cipher) = &mut self.cipher {
            let tag = cipher
                .seal_in_place(&mut self.buf[wire::FRAME_HEADER..])
                .map_err(|_| StreamError::Refused(Refusal::Auth))?;
            self.buf.extend_from_slice(&tag);
        }
        let len = self.buf.len() - wire::FRAME_HEADER;
        let prefix = u32::try_from(len)
            .map_err(|_| StreamError::BadFrame(wire::WireError::Oversized(len)))?;
        self.buf[..wire::FRAME_HEADER].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }

    async fn write_sealed<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> Result<(), StreamError> {
        let written = writer.write_all(&self.buf).await;
        self.trim();
        written?;
        Ok(())
    }

    /// Drops a frame buffer that a large frame grew.
    fn trim(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

fn map_open(e: OpenError) -> StreamError {
    match e {
        OpenError::UnknownKey(id) => StreamError::Refused(Refusal::UnknownKey(id)),
        _ => StreamError::Refused(Refusal::Auth),
    }
}

impl Opener {
    /// Whether bytes past the frame last lent were read already (the start
    /// of a next frame).
    pub fn holds_more(&self) -> bool {
        self.buf.len() > self.lent.unwrap_or(self.start)
    }

    /// Reads the next frame body; `None` at a clean end of stream.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<Vec<u8>>, StreamError> {
        Ok(self.next_frame(reader).await?.map(<[u8]>::to_vec))
    }

    /// Reads the next frame body into this opener's buffer (opened in
    /// place when sealed) and lends it; `None` at a clean end of stream.
    ///
    /// Cancel-safe: dropping the future before it completes loses no
    /// bytes. Memory grows with the bytes that arrive, never to a length
    /// prefix's claim at once, and stays below the frame limit (plus one
    /// read of the next frame's first bytes).
    pub async fn next_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<&[u8]>, StreamError> {
        if let Some(end) = self.lent.take() {
            self.start = end;
        }
        loop {
            let pending = self.buf.len() - self.start;
            let mut needed = wire::FRAME_HEADER;
            if let Some(header) = self.buf[self.start..].first_chunk::<{ wire::FRAME_HEADER }>() {
                let overhead = if self.cipher.is_some() {
                    crypto::FRAME_OVERHEAD
                } else {
                    0
                };
                let len = wire::frame_len(*header, self.max_frame + overhead)
                    .map_err(StreamError::BadFrame)?;
                needed += len;
                if pending >= needed {
                    return self.lend(len).map(Some);
                }
            }
            self.make_room();
            let pending = self.buf.len() - self.start;
            // Small frames: one read takes several. A large frame: at most
            // what it still lacks, so the next frame's bytes are not read
            // into its tail (and moved later), and the buffer grows with
            // what arrived, at most doubling per read.
            let want = (needed - pending)
                .max(SMALL_READ)
                .min(pending.max(READ_STEP));
            // The peer decides how much comes: memory that cannot be had
            // ends the stream with an error, not the host process.
            self.buf.try_reserve(want).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    format!("no memory for {want} more bytes of a frame"),
                )
            })?;
            let n = (&mut *reader)
                .take(want as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n == 0 {
                if pending == 0 {
                    return Ok(None);
                }
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Opens (when sealed) and lends the complete frame of body length
    /// `len` at `start`.
    fn lend(&mut self, len: usize) -> Result<&[u8], StreamError> {
        let body = self.start + wire::FRAME_HEADER;
        let end = body + len;
        self.lent = Some(end);
        let frame = &mut self.buf[body..end];
        match &mut self.cipher {
            Some(cipher) => {
                let plain = cipher.open_in_place(frame).map_err(map_open)?;
                Ok(&self.buf[body..body + plain])
            }
            None => Ok(&self.buf[body..end]),
        }
    }

    /// Drops the bytes handed out before reading more: all of them when
    /// nothing else waits, or by moving the waiting bytes to the front when
    /// they are no more than those dropped (so each byte moves at most once
    /// on average). A buffer a large frame grew is given back either way.
    fn make_room(&mut self) {
        if self.start == 0 {
            return;
        }
        let pending = self.buf.len() - self.start;
        if pending == 0 {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        } else if pending <= self.start {
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                // A large frame went by: its memory is not kept either.
                self.buf.shrink_to(pending.max(READ_STEP));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use tokio::io::duplex;

    fn sealed() -> Security {
        Security {
            keyring: Some(Keyring::new(SecretKey::generate())),
            encryption: Encryption::Require,
            label: "t".into(),
        }
    }

    /// A connected sealed pair over an in-memory pipe.
    async fn pair(
        security: &Security,
        max_frame: usize,
    ) -> (
        (Sealer, Opener, tokio::io::DuplexStream),
        (Sealer, Opener, tokio::io::DuplexStream),
    ) {
        let (mut a, mut b) = duplex(1 << 20);
        // The dialer sends a channel frame first, as real streams do; a
        // plaintext acceptor needs it to tell the stream is plaintext.
        let (ca, cb) = tokio::join!(
            async {
                let (mut s, o) = connect(&mut a, security, max_frame).await.unwrap();
                s.write_frame(&mut a, &[wire::CHANNEL_RPC]).await.unwrap();
                (s, o)
            },
            async {
                let (s, mut o) = accept(&mut b, security, max_frame).await.unwrap();
                let channel = o.read_frame(&mut b).await.unwrap();
                assert_eq!(channel.as_deref(), Some(&[wire::CHANNEL_RPC][..]));
                (s, o)
            }
        );
        ((ca.0, ca.1, a), (cb.0, cb.1, b))
    }

    fn ring(keys: &[&SecretKey]) -> Security {
        let mut ring = Keyring::new(keys[0].clone());
        for k in &keys[1..] {
            ring.install((*k).clone()).unwrap();
        }
        Security {
            keyring: Some(ring),
            encryption: Encryption::Require,
            label: "t".into(),
        }
    }

    /// What the dialer learns from a responder that does not hold its key.
    async fn refusal(dialer: &Security, responder: &Security) -> Refusal {
        let (mut a, mut b) = duplex(1 << 16);
        let (dialed, _) = tokio::join!(connect(&mut a, dialer, 1 << 16), accept(&mut b, responder, 1 << 16));
        match dialed {
            Err(StreamError::Refused(why)) => why,
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// Bytes that are neither a hello nor a frame (an HTTP request, a TLS
    /// hello) are no tribe stream: not blamed on a plaintext peer. A
    /// plaintext frame is, where encryption is required.
    #[tokio::test]
    async fn what_is_no_tribe_stream_is_not_taken_for_a_plaintext_peer() {
        let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        for (first, security) in [
            (&b"GET /metrics HTTP/1.1\r\n\r\n"[..], sealed()),
            (&tls[..], sealed()),
            (&b"GET /metrics HTTP/1.1\r\n\r\n"[..], Security::plaintext("t")),
            (&wire::frame(&[0; 100])[..], sealed()),
        ] {
            let (mut a, mut b) = duplex(1 << 16);
            a.write_all(first).await.unwrap();
            // Whatever the frame bound: a TLS record's header reads as 369 MB.
            let got = accept(&mut b, &security, 1 << 30).await.map(|_| ());
            assert!(
                matches!(&got, Err(StreamError::BadFrame(e)) if e.to_string().contains("not a tribe stream")),
                "{got:?}"
            );
        }
        let (mut a, mut b) = duplex(1 << 16);
        a.write_all(&wire::frame(&[wire::CHANNEL_RPC])).await.unwrap();
        let got = accept(&mut b, &sealed(), 1 << 20).await.map(|_| ());
        assert!(
            matches!(got, Err(StreamError::Refused(Refusal::Plaintext))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_proves_the_keys_the_responder_holds() {
        let [k1, k2, k3] = [(); 3].map(|_| SecretKey::generate());
        // The dialer holds one of the responder's keys (not its primary).
        let got = refusal(&ring(&[&k1, &k3]), &ring(&[&k2, &k3])).await;
        assert!(
            matches!(got, Refusal::KeyRejected { rejected, proven: Some(p) } if rejected == k1.id() && p == k3.id()),
            "{got:?}"
        );
        // It holds none of them: refused, and nothing proven.
        let got = refusal(&ring(&[&k1]), &ring(&[&k2, &k3])).await;
        assert!(
            matches!(got, Refusal::KeyRejected { proven: None, .. }),
            "{got:?}"
        );
        // Proofs made for another dialer's salt (a replay) prove nothing.
        let other = StreamHello::new(k1.id());
        let replayed = proven_refusal(ring(&[&k2, &k3]).keyring.as_ref().unwrap(), &other.salt, "t");
        let dialer = ring(&[&k1, &k3]);
        let (mut a, mut b) = duplex(1 << 16);
        let (dialed, _) = tokio::join!(connect(&mut a, &dialer, 1 << 16), async {
            let mut hello = [0u8; crypto::HELLO_LEN];
            b.read_exact(&mut hello).await.unwrap();
            b.write_all(&replayed).await.unwrap();
        });
        assert!(
            matches!(dialed, Err(StreamError::Refused(Refusal::KeyRejected { proven: None, .. }))),
            "{:?}",
            dialed.map(|_| ())
        );
    }

    #[tokio::test]
    async fn frames_encoded_apart_and_sealed_in_a_batch_open_in_order() {
        for security in [Security::plaintext("t"), sealed()] {
            let ((mut sealer, _, mut a), (_, mut opener, mut b)) = pair(&security, 1 << 20).await;
            // Interleaved with frames written the usual way: one nonce
            // sequence for both.
            sealer.write_frame(&mut a, b"first").await.unwrap();
            let mut batch = Vec::new();
            for n in [0u32, 7, 70_000] {
                let msg = vec![n as u8; n as usize];
                batch.extend(Sealer::encode_frame(&msg, sealer.tag_len()).unwrap());
            }
            sealer.seal_frames(&mut batch).unwrap();
            a.write_all(&batch).await.unwrap();
            sealer.write_frame(&mut a, b"last").await.unwrap();
            assert_eq!(opener.read_frame(&mut b).await.unwrap().unwrap(), b"first");
            for n in [0u32, 7, 70_000] {
                let body = opener.read_frame(&mut b).await.unwrap().unwrap();
                let msg: Vec<u8> = postcard::from_bytes(&body).unwrap();
                assert_eq!(msg, vec![n as u8; n as usize]);
            }
            assert_eq!(opener.read_frame(&mut b).await.unwrap().unwrap(), b"last");
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_buffers_are_reused() {
        for security in [Security::plaintext("t"), sealed()] {
            let ((mut sealer, _, mut a), (_, mut opener, mut b)) = pair(&security, 1 << 20).await;
            for len in [0usize, 1, 100, 70_000, 5] {
                let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
                sealer.write_frame(&mut a, &body).await.unwrap();
                let msg = (len as u64, body.clone());
                sealer.write_msg(&mut a, &msg).await.unwrap();
                assert_eq!(opener.next_frame(&mut b).await.unwrap().unwrap(), body);
                let got = opener.read_frame(&mut b).await.unwrap().unwrap();
                assert_eq!(wire::decode::<(u64, Vec<u8>)>(&got).unwrap(), msg);
            }
            // Small frames after a large one reuse the buffers grown for it.
            assert!(sealer.buf.capacity() >= 70_000);
            drop(a);
            assert!(opener.next_frame(&mut b).await.unwrap().is_none());
        }
    }

    /// Frames of mixed sizes sent in one burst: a read takes several small
    /// ones, or a small one and the start of a large one, and every frame
    /// still comes out whole and in order.
    #[tokio::test]
    async fn a_burst_of_mixed_frames_reads_back_in_order() {
        for security in [Security::plaintext("t"), sealed()] {
            let ((mut sealer, _, mut a), (_, mut opener, mut b)) = pair(&security, 1 << 20).await;
            let sizes = [1usize, 40_000, 3, 3, 100_000, 0, 17_000, 5, 70_000, 2];
            let bodies: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(n, &len)| (0..len).map(|i| (i + n) as u8).collect())
                .collect();
            let mut burst = Vec::new();
            for body in &bodies {
                sealer.write_frame(&mut burst, body).await.unwrap();
            }
            let writer = tokio::spawn(async move {
                a.write_all(&burst).await.unwrap();
                a
            });
            for body in &bodies {
                assert_eq!(opener.next_frame(&mut b).await.unwrap().unwrap(), &body[..]);
            }
            drop(writer.await.unwrap());
            assert!(opener.next_frame(&mut b).await.unwrap().is_none());
        }
    }

    /// A large frame's memory is given back once smaller frames follow.
    #[tokio::test]
    async fn a_large_frame_does_not_pin_its_memory() {
        let ((mut sealer, _, mut a), (_, mut opener, mut b)) = pair(&sealed(), 1 << 20).await;
        let big = vec![9u8; 900_000];
        sealer.write_frame(&mut a, &big).await.unwrap();
        assert_eq!(
            opener.next_frame(&mut b).await.unwrap().unwrap().len(),
            big.len()
        );
        assert!(opener.buf.capacity() >= big.len());
        for n in 0..3u8 {
            sealer.write_frame(&mut a, &[n; 10]).await.unwrap();
            assert_eq!(opener.next_frame(&mut b).await.unwrap().unwrap(), [n; 10]);
        }
        assert!(
            opener.buf.capacity() <= KEEP_CAPACITY,
            "{}",
            opener.buf.capacity()
        );
    }

    /// A read dropped half-way (as `select!` does when another branch wins)
    /// resumes where it stopped; the frame still opens.
    #[tokio::test]
    async fn a_dropped_read_loses_no_bytes() {
        let ((mut sealer, _, a), (_, mut opener, mut b)) = pair(&sealed(), 1 << 20).await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut frame = Vec::new();
        sealer.write_frame(&mut frame, &body).await.unwrap();
        // Trickle the frame in small pieces, with pauses between them.
        let trickle = tokio::spawn(async move {
            let mut a = a;
            for piece in frame.chunks(7_000) {
                a.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            a
        });
        let mut cancelled = 0;
        let got = loop {
            match tokio::time::timeout(Duration::from_micros(300), opener.next_frame(&mut b)).await
            {
                Ok(frame) => break frame.unwrap().unwrap().to_vec(),
                Err(_) => cancelled += 1,
            }
        };
        assert!(cancelled > 0, "the read was never interrupted");
        assert_eq!(got, body);
        drop(trickle.await.unwrap());
    }

    /// A length prefix alone does not allocate what it claims: the body
    /// buffer grows with the bytes that arrive.
    #[tokio::test]
    async fn a_length_prefix_alone_does_not_allocate() {
        let max = 8 << 20;
        let ((_, _, mut a), (_, mut opener, mut b)) = pair(&Security::plaintext("t"), max).await;
        a.write_all(&(max as u32).to_be_bytes()).await.unwrap();
        a.write_all(&[1; 1000]).await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(50), opener.next_frame(&mut b)).await;
        assert!(read.is_err(), "the frame is not complete");
        assert_eq!(opener.buf.len() - opener.start, wire::FRAME_HEADER + 1000);
        assert!(
            opener.buf.capacity() <= 2 * READ_STEP,
            "{} bytes held for 1000 received",
            opener.buf.capacity()
        );
        // Over the limit: refused from the prefix, nothing read.
        let ((_, _, mut a), (_, mut opener, mut b)) = pair(&Security::plaintext("t"), max).await;
        a.write_all(&(max as u32 + 1).to_be_bytes()).await.unwrap();
        let err = opener.next_frame(&mut b).await.unwrap_err();
        assert!(matches!(
            err,
            StreamError::BadFrame(wire::WireError::Oversized(_))
        ));
        assert!(
            opener.buf.capacity() < 2 * SMALL_READ,
            "no more than one small read"
        );
    }

    /// A peer that knows the key id but not the key (it saw a hello go by):
    /// sends a hello with that id, reads the node's, then sends `then`.
    async fn forged_peer(then: Vec<u8>) -> Result<(Sealer, Opener), StreamError> {
        let security = sealed();
        let key_id = security.keyring.as_ref().unwrap().primary_id();
        let (mut a, mut b) = duplex(1 << 20);
        let acceptor = tokio::spawn(async move { accept(&mut b, &security, 16 << 20).await });
        a.write_all(&StreamHello::new(key_id).encode())
            .await
            .unwrap();
        let mut theirs = [0u8; crypto::HELLO_LEN];
        a.read_exact(&mut theirs).await.unwrap();
        a.write_all(&then).await.unwrap();
        acceptor.await.unwrap()
    }

    /// Such a peer is dropped at its first frame header: the confirmation
    /// allows no body, so the node never buffers what the header claims.
    #[tokio::test]
    async fn a_peer_without_the_key_is_dropped_at_its_first_header() {
        // A frame claiming 8 MiB, then the first bytes of it.
        let mut claim = (8u32 << 20).to_be_bytes().to_vec();
        claim.extend_from_slice(&[0xAB; 4096]);
        let got = forged_peer(claim).await;
        assert!(
            matches!(got, Err(StreamError::Refused(Refusal::Auth))),
            "{:?}",
            got.err()
        );
        // A forged confirmation of the right size fails authentication.
        let mut forged = 16u32.to_be_bytes().to_vec();
        forged.extend_from_slice(&[0u8; 16]);
        let got = forged_peer(forged).await;
        assert!(
            matches!(got, Err(StreamError::Refused(Refusal::Auth))),
            "{:?}",
            got.err()
        );
    }
}
