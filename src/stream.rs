//! Framing and sealing of one TCP stream. Each side of a sealed stream first
//! sends a [`StreamHello`] (key id and a fresh salt) in the clear; both then
//! derive per-connection keys from the keyring key and both salts, and every
//! frame is `length | ChaCha20-Poly1305(body)` with counter nonces, so a
//! replayed, reordered or tampered frame fails. A plaintext stream starts
//! directly with a frame; the responder tells them apart by the first two
//! bytes (a hello's magic read as a length would exceed any frame limit).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Encryption;
use crate::crypto::{self, KeyId, Keyring, OpenError, Role, StreamCipher, StreamHello};
use crate::wire;

/// How long the hello exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Magic of a refusal sent in place of a hello.
const REJECT_MAGIC: [u8; 2] = *b"TR";
/// Refusal reason: the responder does not hold the initiator's key.
const REJECT_UNKNOWN_KEY: u8 = 1;
/// Refusal reason: the responder has no keyring at all.
const REJECT_NO_KEYRING: u8 = 2;

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

    fn requires_sealed(&self) -> bool {
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
    /// The peer refused this node's key.
    #[error("the peer does not hold this node's key {0}; the tribe's keys were rotated without this node, start it with a current key")]
    KeyRejected(KeyId),
    /// The peer answered a sealed hello in plaintext or not at all.
    #[error("the peer does not speak sealed streams")]
    PeerNotSealing,
    /// A frame failed authentication (tampered, replayed, reordered, or
    /// another cluster's label).
    #[error("a frame failed authentication")]
    Auth,
    /// The peer did not finish setting the stream up in time.
    #[error("the peer did not finish the stream setup in time")]
    Stalled,
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

/// The sending half's state.
pub struct Sealer(Option<StreamCipher>);
/// The receiving half's state, with a frame header already read, if any.
pub struct Opener {
    cipher: Option<StreamCipher>,
    pending_header: Option<[u8; wire::FRAME_HEADER]>,
    max_frame: usize,
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
    let Some(ring) = security.seals() else {
        return Ok(halves(None, None, max_frame));
    };
    let key = ring.primary().clone();
    let mine = StreamHello::new(key.id());
    let exchange = async {
        stream.write_all(&mine.encode()).await?;
        let mut magic = [0u8; 2];
        stream.read_exact(&mut magic).await?;
        if magic == REJECT_MAGIC {
            let mut rest = [0u8; 2];
            stream.read_exact(&mut rest).await?;
            return Err(StreamError::Refused(Refusal::KeyRejected(mine.key_id)));
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
    Ok(halves(Some(pair), None, max_frame))
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
        Sealer(send),
        Opener {
            cipher: recv,
            pending_header,
            max_frame,
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
                .write_all(&[REJECT_MAGIC[0], REJECT_MAGIC[1], 1, REJECT_UNKNOWN_KEY])
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
    Ok(halves(pair, pending_header, max_frame))
}

impl Sealer {
    /// Whether frames are sealed.
    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    /// Writes one frame (sealed when the stream is).
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        body: &[u8],
    ) -> Result<(), StreamError> {
        let bytes = match &mut self.0 {
            Some(cipher) => {
                let sealed = cipher
                    .seal(body)
                    .map_err(|_| StreamError::Refused(Refusal::Auth))?;
                wire::frame(&sealed)
            }
            None => wire::frame(body),
        };
        writer.write_all(&bytes).await?;
        Ok(())
    }
}

fn map_open(e: OpenError) -> StreamError {
    match e {
        OpenError::UnknownKey(id) => StreamError::Refused(Refusal::UnknownKey(id)),
        _ => StreamError::Refused(Refusal::Auth),
    }
}

impl Opener {
    /// Reads the next frame body; `None` at a clean end of stream.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<Vec<u8>>, StreamError> {
        let header = match self.pending_header.take() {
            Some(h) => h,
            None => {
                let mut header = [0u8; wire::FRAME_HEADER];
                match reader.read_exact(&mut header).await {
                    Ok(_) => header,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let overhead = if self.cipher.is_some() {
            crypto::FRAME_OVERHEAD
        } else {
            0
        };
        let len =
            wire::frame_len(header, self.max_frame + overhead).map_err(StreamError::BadFrame)?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        match &mut self.cipher {
            Some(cipher) => cipher.open(&body).map(Some).map_err(map_open),
            None => Ok(Some(body)),
        }
    }
}
